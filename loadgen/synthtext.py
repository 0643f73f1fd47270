"""Deterministic filler text for traces that carry lengths or hash ids instead of prompts.

Text is made of 4-character words ("bak "), one word per stand-in token (core/tokens.py counts
4 chars per token), picked by the bytes of a SHAKE-128 stream keyed by a string. The same key
always gives the same text, on every machine and Python version; different keys share no prefix
beyond chance, so synthesized prompts never fake prefix reuse. Words are pronounceable so a real
BPE tokenizer (a bare vLLM target) also sees about one or two tokens per word, not hex noise.
"""

from __future__ import annotations

import hashlib
from functools import cache

from fleetgate.core.tokens import CHARS_PER_TOKEN

_CONSONANTS = "bdfghklmnprstvwz"
_VOWELS = "aeio"
_ENDINGS = "lmnr"


@cache
def _word_table():
    """256 distinct 3-letter words plus a space: one byte of the key stream picks one word (token).

    Built on first use so `fleetgate --help` does not import numpy.
    """
    import numpy as np

    words = "".join(f"{c}{v}{e} " for c in _CONSONANTS for v in _VOWELS for e in _ENDINGS)
    return np.frombuffer(words.encode("ascii"), dtype=np.uint8).reshape(256, CHARS_PER_TOKEN)


BLOCK_TOKENS = 512
"""Mooncake's hash ids name 512-token blocks."""


def filler_text(key: str, n_tokens: int) -> str:
    """`n_tokens` words (exactly n_tokens * 4 ASCII chars) determined by `key` alone."""
    if n_tokens <= 0:
        return ""
    stream = bytearray(hashlib.shake_128(key.encode("utf-8")).digest(n_tokens))
    return _word_table()[stream].tobytes().decode("ascii")


class BlockTexts:
    """Text of Mooncake hash-id blocks, memoized: ids repeat across requests, text is built once."""

    def __init__(self, namespace: str = "mooncake") -> None:
        self._namespace = namespace
        self._cache: dict[int, str] = {}

    def block(self, hash_id: int) -> str:
        text = self._cache.get(hash_id)
        if text is None:
            text = filler_text(f"{self._namespace}:block:{hash_id}", BLOCK_TOKENS)
            self._cache[hash_id] = text
        return text

    def prompt(self, hash_ids: list[int], input_tokens: int, unique_key: str) -> str:
        """Blocks concatenated, cut or padded (with text unique to `unique_key`) to input_tokens * 4 chars."""
        want_chars = input_tokens * CHARS_PER_TOKEN
        text = "".join(self.block(h) for h in hash_ids)
        if len(text) >= want_chars:
            return text[:want_chars]
        missing_tokens = (want_chars - len(text)) // CHARS_PER_TOKEN
        return text + filler_text(f"{self._namespace}:pad:{unique_key}", missing_tokens)
