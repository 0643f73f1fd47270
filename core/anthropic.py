"""An Anthropic Messages request as OpenAI chat messages and tools, translated as vLLM translates it
(vllm/entrypoints/anthropic/serving.py), so a conversation renders (core/prefix.py) to the same
text whichever API it came in, and both forms get one routing key and hit one prefix cache.

    system (str or text blocks, joined)      -> {"role": "system", "content": ...} first
    text blocks                              -> the message's content (one block: a string)
    tool_use blocks                          -> the assistant message's tool_calls
    tool_result blocks (user)                -> {"role": "tool", "tool_call_id", "content"} messages
    tools {name, description, input_schema}  -> {"type": "function", "function": {name, description, parameters}}

Anything else (images, thinking) is kept as a content part: it renders, as JSON, the same every time.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def _text_blocks(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(b.get("text", "") for b in value if isinstance(b, Mapping) and b.get("type") == "text")
    return ""


def _tool_result_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping) and b.get("type") == "text")
    return content if isinstance(content, str) else ""


def openai_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat messages vLLM builds from `body` (assumed checked: `messages` a list of objects)."""
    out: list[dict[str, Any]] = []
    system = _text_blocks(body.get("system")) + "".join(
        _text_blocks(m.get("content")) for m in body["messages"] if m.get("role") == "system")
    if system:
        out.append({"role": "system", "content": system})
    for message in body["messages"]:
        role = message.get("role")
        if role == "system":
            continue
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        converted: dict[str, Any] = {"role": role}
        parts: list[Any] = []
        calls: list[dict[str, Any]] = []
        for block in content if isinstance(content, list) else ():
            kind = block.get("type") if isinstance(block, Mapping) else None
            if kind == "text":
                if block.get("text"):
                    parts.append({"type": "text", "text": block["text"]})
            elif kind == "tool_use":
                calls.append({"id": block.get("id") or "", "type": "function",
                              "function": {"name": block.get("name") or "", "arguments": json.dumps(block.get("input") or {})}})
            elif kind == "tool_result" and role == "user":
                out.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "",
                            "content": _tool_result_text(block.get("content"))})
            elif kind is not None:
                parts.append(dict(block))
        if calls:
            converted["tool_calls"] = calls
        if parts:
            converted["content"] = parts[0]["text"] if len(parts) == 1 and parts[0].get("type") == "text" else parts
        if parts or calls or role != "user":
            out.append(converted)
    return out


def openai_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Anthropic tool definitions as OpenAI function tools (None when there are none)."""
    if not tools:
        return None
    converted = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema")
        converted.append({"type": "function", "function": function})
    return converted


# -- the answer's wire format (vLLM's, which is Anthropic's): the emulator sends it, the cache replays it --

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
"""OpenAI finish_reason -> Anthropic stop_reason, as vLLM maps them."""
FINISH_REASONS = {stop: finish for finish, stop in STOP_REASONS.items()}
"""And back: what the semantic cache keeps is an OpenAI finish_reason, whichever API answered."""


def message_body(message_id: str, model: str, text: str, stop_reason: str | None, usage: Mapping[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) message, without null fields as vLLM sends it."""
    body: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant",
                            "content": [{"type": "text", "text": text}] if text else [], "model": model}
    if stop_reason is not None:
        body["stop_reason"] = stop_reason
    body["usage"] = dict(usage)
    return body


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """One typed SSE event: `event: <type>` then its JSON."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def stream_start(message_id: str, model: str, input_tokens: int) -> bytes:
    """message_start and the text block's content_block_start."""
    message = {"id": message_id, "content": [], "model": model, "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": input_tokens, "output_tokens": 0}}  # vLLM leaves out type and role here
    return (sse_event({"type": "message_start", "message": message})
            + sse_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))


def stream_text(text: str) -> bytes:
    return sse_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})


def stream_end(stop_reason: str, usage: Mapping[str, int]) -> bytes:
    """content_block_stop, message_delta (stop reason, usage) and message_stop."""
    return (sse_event({"type": "content_block_stop", "index": 0})
            + sse_event({"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": dict(usage)})
            + sse_event({"type": "message_stop"}))
