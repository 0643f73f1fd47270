"""The deterministic stand-in tokenizer shared by the emulator, the simulator and the router.

About four characters make one token (the usual English ratio for Llama-style BPE). KV-cache
block identity is a chain of xxh3 hashes over 16-token (64-character) chunks, so two prompts
share cached blocks exactly when they share a character prefix, as in vLLM's prefix cache.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson
import xxhash

CHARS_PER_TOKEN = 4
KV_BLOCK_TOKENS = 16
KV_BLOCK_CHARS = CHARS_PER_TOKEN * KV_BLOCK_TOKENS


def count_tokens(text: str) -> int:
    """Tokens in `text` under the stand-in tokenizer (ceil of chars / 4; empty text is 0)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def chain_hashes(text: str, block_chars: int, seed: int = 0) -> list[int]:
    """Chained xxh3_64 hashes of the full `block_chars` blocks of `text`.

    h_i = xxh3(h_{i-1} || block_i): equal hashes at position i mean equal text up to block i.
    A trailing partial block is not hashed (vLLM only caches full blocks).
    """
    hashes: list[int] = []
    previous = seed.to_bytes(8, "little")
    data = text.encode("utf-8", "surrogatepass")
    # Work on characters, not bytes, so block boundaries do not depend on the encoding.
    n_full = len(text) // block_chars
    if len(data) == len(text):  # ASCII fast path: byte offsets equal character offsets
        for i in range(n_full):
            digest = xxhash.xxh3_64_digest(previous + data[i * block_chars : (i + 1) * block_chars])
            hashes.append(int.from_bytes(digest, "little"))
            previous = digest
        return hashes
    for i in range(n_full):
        block = text[i * block_chars : (i + 1) * block_chars].encode("utf-8", "surrogatepass")
        digest = xxhash.xxh3_64_digest(previous + block)
        hashes.append(int.from_bytes(digest, "little"))
        previous = digest
    return hashes


def kv_block_hashes(text: str) -> list[int]:
    """Hashes of the full 16-token KV blocks of a prompt, as the emulated prefix cache keys them."""
    return chain_hashes(text, KV_BLOCK_CHARS)


def content_text(content: Any) -> str:
    """A chat message's content as the text a model reads: strings as is, text parts joined,
    other parts (images, tool payloads) as sorted JSON so equal content renders equally."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, Mapping) and part.get("type") == "text"
            else orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode()
            for part in content
        )
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
