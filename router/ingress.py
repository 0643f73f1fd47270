"""Client body -> validated `InferenceRequest`, or an `InvalidRequestError` that says what is wrong.

Only the fields the gateway acts on are checked; the body itself is forwarded unchanged, so any
field vLLM understands and we do not model still reaches it.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson
import xxhash

from fleetgate.core.anthropic import openai_messages, openai_tools
from fleetgate.core.errors import InvalidRequestError
from fleetgate.core.responses import chat_messages
from fleetgate.core.request import ApiKind, InferenceRequest
from fleetgate.router.keys import KeyEntry
from fleetgate.router.limits import check_depth


def _require(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise InvalidRequestError(message, param=param)


def _optional_int(body: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f"'{name}' must be an integer >= {minimum}", name)
    return value


def _prompt_text(prompt: Any) -> str:
    """Completions accept a string or a list of strings; token-id prompts are forwarded as JSON text."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return orjson.dumps(prompt).decode()
    raise InvalidRequestError("'prompt' must be a string or a non-empty list of strings", param="prompt")


def _embedding_text(value: Any) -> str:
    """Embedding input (a string, strings, token ids, or lists of token ids) as the text to count."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return "\n".join(_prompt_text(v) for v in value)
    try:
        return _prompt_text(value)
    except InvalidRequestError:
        raise InvalidRequestError("'input' must be a string, a list of strings or token ids", param="input") from None


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    _require(isinstance(value, list) and len(value) > 0, "'messages' must be a non-empty list", "messages")
    for i, message in enumerate(value):
        _require(isinstance(message, dict) and isinstance(message.get("role"), str),
                 f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
    return tuple(value)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequestError(f"request body is not valid JSON: {error}") from None
    _require(isinstance(body, dict), "request body must be a JSON object", "body")
    check_depth(body)
    return body


def parse_cache_feedback(raw: bytes) -> str:
    """The `request_id` of a cache feedback body `{"request_id": str, "reason"?: str}`; the reason is
    accepted for the client's own records and never kept (it may quote the prompt)."""
    body = _json_object(raw)
    request_id = body.get("request_id")
    _require(isinstance(request_id, str) and request_id != "",
             "'request_id' is required: the x-request-id of the cached answer that was wrong", "request_id")
    _require(isinstance(body.get("reason", ""), str), "'reason' must be a string", "reason")
    return request_id


def parse_inference_request(
    raw: bytes,
    api: ApiKind,
    *,
    request_id: str,
    arrival_s: float,
    headers: Mapping[str, str],
    key: KeyEntry | None = None,
) -> InferenceRequest:
    """Parse and validate one chat, completions or (Anthropic) messages body (headers with lower-case
    names). `key`: the caller's verified key (keys file), which gives the tenant and priority class."""
    body = _json_object(raw)
    model = body.get("model")
    _require(isinstance(model, str) and model != "", "'model' is required and must be a string", "model")
    stream = body.get("stream", False)
    _require(isinstance(stream, bool), "'stream' must be a boolean", "stream")
    max_tokens = (_optional_int(body, "max_completion_tokens", 1) or _optional_int(body, "max_tokens", 1)
                  or _optional_int(body, "max_output_tokens", 1))
    n = _optional_int(body, "n", 1) or 1
    temperature = body.get("temperature")
    _require(temperature is None or (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)),
             "'temperature' must be a number", "temperature")
    tools = body.get("tools")
    _require(tools is None or isinstance(tools, list), "'tools' must be a list", "tools")
    user = body.get("user")
    _require(user is None or isinstance(user, str), "'user' must be a string", "user")
    messages: tuple[Mapping[str, Any], ...] | None = None
    prompt: str | None = None
    if api == "chat":
        messages = _messages(body.get("messages"))
    elif api == "messages":
        _require(max_tokens is not None, "'max_tokens' is required", "max_tokens")
        _messages(body.get("messages"))
        _require(body.get("system") is None or isinstance(body["system"], (str, list)),
                 "'system' must be a string or a list of text blocks", "system")
        _require(all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools or ()),
                 "each tool must be an object with a string 'name'", "tools")
        messages = tuple(openai_messages(body))
        tools = openai_tools(tools)
    elif api == "responses":
        _require(isinstance(body.get("input"), str) or (isinstance(body.get("input"), list) and body["input"] != []),
                 "'input' is required: a string or a non-empty list of items", "input")
        _require(body.get("previous_response_id") is None or isinstance(body["previous_response_id"], str),
                 "'previous_response_id' must be a string", "previous_response_id")
        messages, tools = tuple(chat_messages(body)), None  # its tools are Responses tools: forwarded, not rendered
    elif api == "embeddings":
        _require(not stream, "embeddings are not streamed", "stream")
        _require("input" in body, "'input' is required", "input")
        prompt = _embedding_text(body["input"])
    elif api in ("tokenize", "detokenize"):
        needed = "tokens" if api == "detokenize" else ("messages" if "messages" in body else "prompt")
        _require(needed in body, f"'{needed}' is required", needed)
        prompt = ""  # nothing is generated: no tokens to count
    else:
        _require("prompt" in body, "'prompt' is required", "prompt")
        prompt = _prompt_text(body["prompt"])
    return InferenceRequest(
        request_id=request_id,
        api=api,
        model=model,
        body=body,
        stream=stream,
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        tools=tuple(tools) if tools else None,
        temperature=float(temperature) if temperature is not None else None,
        n=n,
        user=user,
        session_id=headers.get("x-session-id") or user,
        tenant=key.tenant if key is not None else tenant_of(headers),
        priority=key.priority if key is not None else None,
        key_id=key.id if key is not None else None,
        cache_bypass=_refuses_cached(headers),
        arrival_s=arrival_s,
    )


def _refuses_cached(headers: Mapping[str, str]) -> bool:
    """`Cache-Control: no-cache` (or `no-store`): the client wants a fresh answer, and none of it kept."""
    directives = {d.split("=", 1)[0].strip().lower() for d in headers.get("cache-control", "").split(",")}
    return not directives.isdisjoint({"no-cache", "no-store"})


def tenant_of(headers: Mapping[str, str]) -> str:
    """The tenant is a hash of the API key, so cache entries never cross keys and keys are never
    kept in memory or Redis; no key -> "default"."""
    token = headers.get("authorization", "").removeprefix("Bearer ").strip()
    return f"key-{xxhash.xxh3_64_hexdigest(token.encode())}" if token else "default"
