"""An OpenAI Responses request (`/v1/responses`) as chat messages: `instructions` as the system
message, then the `input` (a string: one user message; a list: its message items, their text
parts joined). The gateway routes on this rendering; the emulator generates from it."""

from __future__ import annotations

from typing import Any, Mapping

from fleetgate.core.tokens import content_text

_TEXT_PARTS = ("input_text", "output_text", "text")


def _item_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, Mapping) and p.get("type") in _TEXT_PARTS
                       else content_text([p]) for p in content)
    return content_text(content)


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conversation `body` sends, as chat messages (items without a role render as JSON)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    for item in given if isinstance(given, list) else ():
        if isinstance(item, Mapping) and isinstance(item.get("role"), str):
            messages.append({"role": item["role"], "content": _item_text(item.get("content"))})
        else:
            messages.append({"role": "user", "content": content_text([item])})
    return messages
