"""Prompt -> KV block keys (precise mode): the one definition the gateway, the emulator and the
tests share.

A key is a chain over token ids, not vLLM's own block hash: vLLM seeds its hash per process (and
may hash with sha256), so a router cannot recompute it, but every BlockStored event carries the
block's token ids, so the registry recomputes this key from the event and the router from the
prompt. key_i = xxh3_64(digest_{i-1} || token ids of block i as little-endian uint32), with eight
zero bytes before the first block; only full blocks get a key, as only they are cached.

Token ids come from the pool's `tokenizer` (a tokenizer.json; the chat template from the
tokenizer_config.json or chat_template.jinja beside it, rendered with jinja2 as transformers does), or, without one,
from "character blocks": the emulator's chat template (pools/emulator/text.py) and its stand-in
tokenizer (core/tokens.py, 4 characters a token), where a token's id is its 4 ASCII bytes read as
a little-endian uint32 (xxh32 of its UTF-8 when not ASCII). For ASCII text the packed ids are the
text's bytes, so character keys equal `core.tokens.kv_block_hashes` and cost one xxh3 per block.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import xxhash

from fleetgate.core.request import InferenceRequest
from fleetgate.core.tokens import CHARS_PER_TOKEN, KV_BLOCK_TOKENS
from fleetgate.pools.emulator.text import render_chat_prompt

_SEED_DIGEST = bytes(8)


def pack_token_ids(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32, the bytes a key hashes."""
    return struct.pack(f"<{len(token_ids)}I", *token_ids)


def chain_keys(packed: bytes, block_tokens: int, parent_key: int | None = None) -> tuple[int, ...]:
    """Keys of the full blocks of `packed` token ids, chained on `parent_key` (None: the first block)."""
    step = block_tokens * 4
    previous = _SEED_DIGEST if parent_key is None else parent_key.to_bytes(8, "little")
    keys: list[int] = []
    digest_of = xxhash.xxh3_64_digest
    for start in range(0, len(packed) - step + 1, step):
        previous = digest_of(previous + packed[start : start + step])
        keys.append(int.from_bytes(previous, "little"))
    return tuple(keys)


def char_token_bytes(text: str) -> bytes:
    """Packed ids of the full 4-character tokens of `text` (a partial last token never completes a
    cached block of the emulator, whose blocks are 64 whole characters)."""
    full = len(text) - len(text) % CHARS_PER_TOKEN
    if text.isascii():
        return text[:full].encode("ascii")
    ids = []
    for start in range(0, full, CHARS_PER_TOKEN):
        chunk = text[start : start + CHARS_PER_TOKEN]
        data = chunk.encode("utf-8", "surrogatepass")
        ids.append(int.from_bytes(data, "little") if chunk.isascii() else xxhash.xxh32_intdigest(data))
    return pack_token_ids(ids)


class PromptKeys(Protocol):
    """How one pool's engines turn a request into token ids; `kv_hashes` chains them into keys."""

    def token_bytes(self, request: InferenceRequest) -> bytes:
        """The prompt's token ids, packed (`pack_token_ids`)."""
        ...


class CharacterKeys:
    """Pools without a tokenizer: the emulator's template and 4-character tokens."""

    def token_bytes(self, request: InferenceRequest) -> bytes:
        if request.messages is not None:
            return char_token_bytes(render_chat_prompt(request.messages, request.tools))
        return char_token_bytes(request.prompt or "")


class TokenizerKeys:
    """Pools that name a tokenizer.json: its ids for the prompt as vLLM renders it (the chat
    template without added special tokens; a completions prompt with them)."""

    def __init__(self, tokenizer_json: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        self._tokenizer = Tokenizer.from_file(str(path))
        config_path = path.with_name("tokenizer_config.json")
        config: Mapping[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
        self._specials = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token")}
        template = config.get("chat_template")
        jinja_file = path.with_name("chat_template.jinja")  # where transformers >= 4.50 saves it
        if not isinstance(template, str) and jinja_file.exists():
            template = jinja_file.read_text()
        self._template = _compile_template(template) if isinstance(template, str) else None

    def render(self, messages: Iterable[Mapping[str, Any]], tools: Iterable[Any] | None = None) -> str:
        if self._template is None:
            raise ValueError("the tokenizer has no chat template (tokenizer_config.json or chat_template.jinja)")
        return self._template.render(messages=list(messages), tools=list(tools) if tools else None,
                                     add_generation_prompt=True, **self._specials)

    def token_ids(self, request: InferenceRequest) -> list[int]:
        if request.messages is not None:
            return self._tokenizer.encode(self.render(request.messages, request.tools), add_special_tokens=False).ids
        return self._tokenizer.encode(request.prompt or "", add_special_tokens=True).ids

    def token_bytes(self, request: InferenceRequest) -> bytes:
        return pack_token_ids(self.token_ids(request))


def kv_hashes(keys: PromptKeys, request: InferenceRequest, block_tokens: int = KV_BLOCK_TOKENS) -> tuple[int, ...]:
    """The request's block keys in `block_tokens`-token blocks."""
    return chain_keys(keys.token_bytes(request), block_tokens)


@cache
def prompt_keys(tokenizer_json: str | None) -> PromptKeys:
    """One keyer per tokenizer file (loading one takes tens of ms), character keys for None."""
    return CharacterKeys() if tokenizer_json is None else TokenizerKeys(tokenizer_json)


def _token_text(token: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(token, Mapping):
        return str(token.get("content", ""))
    return "" if token is None else str(token)


def _compile_template(source: str) -> Any:
    """transformers' environment for chat templates: sandboxed, trimmed blocks, `tojson`."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
