"""Prompt text in, answer text out: the emulator's chat template and its deterministic "model".

The chat template is Llama-3 shaped (header tokens per message, then the assistant header), so
the rendered prompt of a follow-up turn starts with the rendered prompt of the previous turn, as a
real template makes it, and the prefix cache sees the reuse a real vLLM would.

Answers are words of exactly one stand-in token (3 letters and a space), chosen by hashing
(seed, position): the same seed always yields the same text, streamed or not, and
`count_tokens(answer) == completion_tokens`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import orjson
import xxhash

from fleetgate.core.tokens import content_text

_WORDS = tuple(
    "the and for are but not you all any can had her was one our out day get has him his how man new now "
    "old see two way who boy did its let put say she too use art sky sea sun air map top key end run set "
    "big low red far few own yes tip net log row".split()
)
assert all(len(w) == 3 for w in _WORDS)


def render_chat_prompt(messages: Iterable[Mapping[str, Any]], tools: Iterable[Any] | None = None) -> str:
    """The prompt text vLLM would feed the model for a chat request (Llama-3 style template)."""
    parts = ["<|begin_of_text|>"]
    if tools:
        tools_json = orjson.dumps(list(tools), option=orjson.OPT_SORT_KEYS).decode()
        parts.append(f"<|start_header_id|>system<|end_header_id|>\n\nTools: {tools_json}<|eot_id|>")
    for message in messages:
        text = content_text(message.get("content"))
        if message.get("tool_calls"):
            text += orjson.dumps(message["tool_calls"], option=orjson.OPT_SORT_KEYS).decode()
        parts.append(f"<|start_header_id|>{message.get('role', 'user')}<|end_header_id|>\n\n{text}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def answer_seed(prompt_text: str, seed: int | None) -> int:
    """The request's `seed` when given, else a hash of the prompt (greedy decoding is deterministic)."""
    return seed if seed is not None else xxhash.xxh3_64_intdigest(prompt_text.encode("utf-8", "surrogatepass"))


NATURAL_LENGTH_TOKENS = (8, 400)
"""Range of the answer length at which the emulated model emits end-of-sequence."""


def natural_length(seed: int) -> int:
    """Where the answer for `seed` ends on its own (finish_reason "stop"), as a real model's EOS
    would; a smaller max_tokens cuts it first ("length"), and ignore_eos never stops early."""
    low, high = NATURAL_LENGTH_TOKENS
    return low + xxhash.xxh3_64_intdigest((seed & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") + b"eos") % (high - low)


def answer_text(seed: int, start: int, stop: int) -> str:
    """Tokens [start, stop) of the answer for `seed`, one 4-character word per token."""
    prefix = (seed & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
    n_words = len(_WORDS)
    return "".join(
        _WORDS[xxhash.xxh3_64_intdigest(prefix + i.to_bytes(4, "little")) % n_words] + " " for i in range(start, stop)
    )
