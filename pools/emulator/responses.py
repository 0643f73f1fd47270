"""The emulator's `/v1/responses` (OpenAI's Responses API, the stateless-plus-store subset vLLM
serves): the request as a chat underneath (core/responses.py), answered as a `response` object or
its typed SSE events, and kept (`store`, default true) so `previous_response_id` continues it and
`GET /v1/responses/{id}` finds it, on this instance only, as vLLM's in-memory store does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.core.responses import chat_messages
from fleetgate.core.usage import Usage
from fleetgate.pools.emulator.protocol import BadRequest, ChatCompletionRequest

STORED_RESPONSES = 4096  # oldest forgotten first


class _ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)


class ResponseStore:
    """Stored responses by id: the object itself and the conversation up to and including its answer."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = OrderedDict()

    def get(self, response_id: str) -> dict[str, Any] | None:
        item = self._items.get(response_id)
        return item[0] if item else None

    def conversation(self, response_id: str) -> list[dict[str, Any]] | None:
        item = self._items.get(response_id)
        return item[1] if item else None

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        self._items[response["id"]] = (response, conversation)
        if len(self._items) > STORED_RESPONSES:
            self._items.popitem(last=False)


class ResponsesJob:
    """One parsed responses request: the chat the engine runs, and what its answer must echo."""

    def __init__(self, raw: bytes, store: ResponseStore) -> None:
        try:
            self.body = _ResponsesRequest.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Invalid JSON body: {exc}", param="body") from None
        except ValidationError as exc:
            error = exc.errors()[0]
            raise BadRequest(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}",
                             param=".".join(str(p) for p in error["loc"]) or "body") from None
        history: list[dict[str, Any]] = []
        if self.body.previous_response_id is not None:
            found = store.conversation(self.body.previous_response_id)
            if found is None:
                raise BadRequest(f"Response with id '{self.body.previous_response_id}' not found.", status=404,
                                 param="response_id", kind="invalid_request_error")
            history = found
        self.messages = history + chat_messages(self.body.model_dump(exclude_none=True))
        if not self.messages:  # `"input": []` alone: vLLM refuses it with a 400, so nothing reaches the engine
            raise BadRequest("The input must not be empty", param="input")
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def chat(self) -> ChatCompletionRequest:
        chat = {"model": self.body.model, "messages": self.messages, "max_tokens": self.body.max_output_tokens,
                "stream": self.body.stream, "temperature": self.body.temperature, "top_p": self.body.top_p}
        return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})

    def response(self, model: str, text: str | None, finish_reason: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        """The `response` object: in progress (text None) or done."""
        done = text is not None
        status = "in_progress" if not done else "incomplete" if finish_reason == "length" else "completed"
        output = [self.message_item(text, "completed")] if done else []
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "model": model, "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": self.body.instructions, "max_output_tokens": self.body.max_output_tokens,
            "output": output, "parallel_tool_calls": True, "previous_response_id": self.body.previous_response_id,
            "temperature": self.body.temperature, "tool_choice": "auto", "tools": [], "top_p": self.body.top_p,
            "text": {"format": {"type": "text"}}, "truncation": "disabled", "usage": usage,
        }

    def message_item(self, text: str, status: str) -> dict[str, Any]:
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []}

    def keep(self, store: ResponseStore, response: dict[str, Any], text: str) -> None:
        if self.body.store:
            store.put(response, [*self.messages, {"role": "assistant", "content": text}])


def _usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


class ResponseWire:
    """One response in the Responses API's shapes, whole or as typed SSE events (numbered as the API
    numbers them); the finished response is stored when the request asked for it."""

    def __init__(self, job: ResponsesJob, model: str, store: ResponseStore) -> None:
        self._job, self._model, self._store = job, model, store
        self._sequence = 0

    def whole(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        final = self._job.response(self._model, text, finish_reason, _usage(usage))
        self._job.keep(self._store, final, text)
        return final

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    def start(self) -> bytes:
        job = self._job
        opening = job.response(self._model, None, None, None)
        part = {"type": "output_text", "text": "", "annotations": []}
        return (self.event("response.created", response=opening) + self.event("response.in_progress", response=opening)
                + self.event("response.output_item.added", output_index=0, item=job.message_item("", "in_progress"))
                + self.event("response.content_part.added", item_id=job.item_id, output_index=0, content_index=0,
                             part=part))

    def delta(self, text: str) -> bytes:
        job = self._job
        return b"" if not text else self.event("response.output_text.delta", item_id=job.item_id, output_index=0, content_index=0,
                          delta=text, logprobs=[])

    def end(self, text: str, finish_reason: str, usage: Usage) -> bytes:
        job, final = self._job, self.whole(text, finish_reason, usage)
        part = {"type": "output_text", "text": text, "annotations": []}
        return (self.event("response.output_text.done", item_id=job.item_id, output_index=0, content_index=0,
                           text=text, logprobs=[])
                + self.event("response.content_part.done", item_id=job.item_id, output_index=0, content_index=0,
                             part=part)
                + self.event("response.output_item.done", output_index=0, item=job.message_item(text, "completed"))
                + self.event("response.completed", response=final))  # vLLM's last event, even for an incomplete one
