"""The OpenAPI 3.1 document of the gateway's own endpoints, served at GET /openapi.json.

Hand-written, like the app's routes: it names each endpoint, its method and the fields the gateway
itself checks (router/ingress.py); any other field a body carries is forwarded to vLLM unchanged,
so request bodies stay open (`additionalProperties`). Schemathesis reads it to fuzz a live gateway
(tests/integration/app/test_openapi_fuzz.py).
"""

from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_JSON = {"type": "object"}
_TEXT_OR_PARTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
_MESSAGES = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"], "properties": {"role": {"type": "string"}, "content": _TEXT_OR_PARTS}}}
_SAMPLING = {"stream": {"type": "boolean"},
             "max_tokens": {"type": "integer", "minimum": 1}, "n": {"type": "integer", "minimum": 1},
             "temperature": {"type": "number"}, "user": {"type": "string"},
             "tools": {"type": "array", "items": {"type": "object"}}}
_PROMPT = {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
                     {"type": "array", "minItems": 1, "items": {"type": "integer"}}]}


def _body(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": {**_SAMPLING, **properties}}


_INFERENCE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": _body(["model", "messages"], messages=_MESSAGES),
    "/v1/completions": _body(["model", "prompt"], prompt=_PROMPT),
    "/v1/messages": _body(["model", "messages", "max_tokens"], messages=_MESSAGES,
                          system=_TEXT_OR_PARTS),
    "/v1/responses": _body(["model", "input"], input=_TEXT_OR_PARTS, previous_response_id={"type": "string"}),
    "/v1/embeddings": _body(["model", "input"], input=_PROMPT),
    "/tokenize": _body(["model", "prompt"], prompt={"type": "string"}),
    "/detokenize": _body(["model", "tokens"], tokens={"type": "array", "items": {"type": "integer"}}),
}


def _answers(description: str, *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": description}}
    for status in errors:
        out[str(status)] = {"description": "an OpenAI-style error",
                            "content": {"application/json": {"schema": _ERROR}}}
    return out


def _post(summary: str, schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}, "responses": _answers(summary, *errors)}}


def _get(summary: str, *errors: int) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": _answers(summary, *errors)}}


_REFUSALS = (400, 401, 403, 404, 408, 413, 429, 431, 502, 503, 504)


def openapi_document(models: list[str]) -> dict[str, Any]:
    """The document for a fleet serving `models` (any other model: 404), built on request: it is small."""
    model = {"type": "string", "enum": models} if models else {"type": "string", "minLength": 1}
    paths: dict[str, Any] = {
        path: _post(f"OpenAI-compatible {path}, routed to the fleet",
                    {**schema, "properties": {"model": model, **schema["properties"]}}, *_REFUSALS)
        for path, schema in _INFERENCE_BODIES.items()}
    paths.update({
        "/v1/models": _get("the models the fleet serves (those the caller's key may use)", 401),
        "/v1/cache/feedback": _post("report a wrong cached answer by its x-request-id", {
            "type": "object", "required": ["request_id"],
            "properties": {"request_id": {"type": "string"}, "reason": {"type": "string"}}}, 400, 401),
        "/health": _get("whether the process runs"),
        "/ready": {"get": {"summary": "whether to send it requests", "responses": {
            "200": {"description": "ready"}, "503": {"description": "draining or a model has no healthy instance"}}}},
        "/metrics": _get("Prometheus metrics"),
        "/openapi.json": _get("this document"),
        "/admin/fleet": _get("pools, instances and their state", 401, 403),
        "/admin/explain": {"post": {**_post("the plan a request would get", _JSON, 400, 401, 403)["post"],
                                    "parameters": [{"name": "api", "in": "query", "required": False,
                                                    "schema": {"type": "string", "enum": ["chat", "completions"]}}]}},
        "/admin/policy/reload": {"post": {"summary": "reload the policy file now", "responses": {
            **_answers("reloaded", 400, 401, 403), "422": {"description": "the new policy has errors"}}}},
        "/admin/instances": {method: {"summary": f"{verb} an instance of a pool", "requestBody": {
            "required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["pool"],
                "properties": {"pool": {"type": "string"}, "url": {"type": "string"}}}}}},
            "responses": _answers(verb, 400, 401, 403)} for method, verb in (("post", "add"), ("delete", "remove"))},
    })
    return {"openapi": "3.1.0", "info": {"title": "Fleetgate", "version": "1"}, "paths": paths}
