"""Tracing end to end: a second Serve application (two gateway replicas, tracing on through its settings,
admission on) exports over OTLP/HTTP to a receiver on loopback; each instance sits behind a forwarder that
records the `traceparent` it was sent. A traced request shows its spans there, named and nested, with
their key attributes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Iterator

import openai
import pytest
from support.gateway import MODEL
from support.otlp import OtlpReceiver, ReceivedSpan, forwarder, otlp_receiver
from support.servers import in_thread

pytestmark = pytest.mark.e2e

STAGES = ("fleetgate.plan", "fleetgate.route", "fleetgate.upstream", "fleetgate.stream")


@pytest.fixture(scope="module")
def traced(serve_url: str, fleet) -> Iterator[dict]:  # noqa: ANN001
    from ray import serve

    from fleetgate.app.serve import build_app

    servers, _loop = fleet

    @contextlib.asynccontextmanager
    async def parts():  # noqa: ANN202
        async with otlp_receiver() as receiver, contextlib.AsyncExitStack() as stack:
            forwarders = [await stack.enter_async_context(forwarder(s.url)) for s in servers]
            yield receiver, forwarders

    with in_thread(parts) as ((receiver, forwarders), _loop):
        app = build_app({"worker_urls": [f.url for f in forwarders], "model": MODEL, "router": "dualmap",
                         "num_replicas": 2, "admission": True, "otel_traces_exporter": "otlp",
                         "otel_exporter_otlp_endpoint": receiver.url, "otel_service_name": "fleetgate-e2e"})
        serve.run(app, name="traced", route_prefix="/traced", blocking=False)
        try:
            yield {"url": serve_url + "/traced", "receiver": receiver, "forwarders": forwarders}
        finally:
            serve.delete("traced")


async def _trace_of(receiver: OtlpReceiver, request_id: str, timeout_s: float = 60) -> list[ReceivedSpan]:
    """The spans of the request's trace once its server span and every stage arrived (replicas export in
    batches every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        roots = [s for s in receiver.all() if s.attributes.get("fleetgate.request_id") == request_id]
        if roots:
            spans = [s for s in receiver.all() if s.trace_id == roots[0].trace_id]
            if {*STAGES, "fleetgate.admission", "POST"} <= {s.name for s in spans}:
                return spans
        assert time.monotonic() < deadline, (f"the spans of {request_id} did not reach the receiver in {timeout_s}s; "
                                             f"received {sorted({(s.name, s.attributes.get('fleetgate.request_id')) for s in receiver.all()}, key=str)}")
        await asyncio.sleep(0.2)


async def test_a_traced_request_through_two_replicas_reaches_the_otlp_receiver(traced: dict) -> None:
    client = openai.AsyncOpenAI(base_url=traced["url"] + "/v1", api_key="sk-e2e-secret", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Trace this question about routing."}]
    request_ids = []
    for _ in range(4):  # two replicas: each of them likely serves one
        stream = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=5,
                                                                        stream=True)
        request_ids.append(stream.headers["x-request-id"].split(",")[0].strip())  # Ray's proxy repeats the header
        assert [chunk async for chunk in stream.parse()]

    for request_id in request_ids:
        spans = await _trace_of(traced["receiver"], request_id)
        by_name = {s.name: s for s in spans}
        root = next(s for s in spans if s.attributes.get("fleetgate.request_id") == request_id)
        assert root.name == "POST /traced/v1/chat/completions"  # the server span, under the application's route prefix
        assert root.parent_id == "" and root.service == "fleetgate-e2e"
        for stage in STAGES:
            assert by_name[stage].parent_id == root.span_id, stage
        assert by_name["fleetgate.admission"].parent_id == by_name["fleetgate.route"].span_id
        assert by_name["POST"].parent_id == by_name["fleetgate.upstream"].span_id
        assert by_name["fleetgate.plan"].attributes["fleetgate.rule"]
        route = by_name["fleetgate.route"].attributes
        assert route["fleetgate.pool"] == "default" and route["fleetgate.instance"].startswith("default-")
        assert route["fleetgate.route"] and route["fleetgate.estimated_ttft_ms"] > 0
        assert by_name["fleetgate.stream"].attributes["gen_ai.usage.output_tokens"] == 5
        assert root.attributes["fleetgate.ttft_ms"] > 0
        sent = [h["traceparent"] for f in traced["forwarders"] for h in f.headers]
        assert any(t.split("-")[1:3] == [root.trace_id, by_name["POST"].span_id] for t in sent)
        assert "sk-e2e-secret" not in repr([s.attributes for s in spans])
