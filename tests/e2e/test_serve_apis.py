"""The APIs beyond chat and completions, end to end through real Ray Serve with the official clients:
`anthropic` for /v1/messages, `openai` for /v1/responses and /v1/embeddings, streaming and not.

A second gateway application runs on the session's Ray Serve (route prefix /apis), in front of the
session's emulated chat instances plus an emulated embedding model, from a fleet file."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator, Iterator

import anthropic
import openai
import pytest
from support.gateway import MODEL
from support.servers import in_thread

from fleetgate.app.settings import ServeCommandSettings
from fleetgate.pools.emulator.server import EmulatorServer

pytestmark = pytest.mark.e2e

EMBED = "tiny-embed"


@contextlib.asynccontextmanager
async def embedding_instance() -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer("h100", EMBED, time_scale=0.05, serves="embed")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def apis_url(serve_url: str, serve_settings: ServeCommandSettings, fleet: tuple[list, object],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from fleetgate.app.serve import build_app

    servers, _loop = fleet
    with in_thread(embedding_instance) as (embedder, _):
        fleet_file = Path(tmp_path_factory.mktemp("apis")) / "fleet.yaml"
        fleet_file.write_text(f"""pools:
  - {{name: chat, model: {MODEL}, instances: [{', '.join(f'{{url: "{s.url}"}}' for s in servers)}]}}
  - {{name: vectors, model: {EMBED}, serves: embed, instances: [{{url: "{embedder.url}"}}]}}
""")
        args = {**serve_settings.serve_args(), "fleet": str(fleet_file), "worker_urls": (), "model": None,
                "num_replicas": 1}
        serve.run(build_app(args), name="fleetgate-apis", route_prefix="/apis", blocking=False)
        try:
            yield serve_url + "/apis"
        finally:
            serve.delete("fleetgate-apis")


async def test_anthropic_client_through_ray_serve(apis_url: str) -> None:
    client = anthropic.AsyncAnthropic(base_url=apis_url, api_key="k", max_retries=0, timeout=60)
    message = await client.messages.create(model=MODEL, max_tokens=8, system="Be brief.",
                                           messages=[{"role": "user", "content": "Name a routing algorithm."}])
    assert message.type == "message" and message.usage.output_tokens == 8 and message.content[0].text
    async with client.messages.stream(model=MODEL, max_tokens=8, system="Be brief.",
                                      messages=[{"role": "user", "content": "Name a routing algorithm."}]) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == message.content[0].text
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["error"]["type"] == "not_found_error"


async def test_openai_responses_and_embeddings_through_ray_serve(apis_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=apis_url + "/v1", api_key="k", max_retries=0, timeout=60)
    response = await client.responses.create(model=MODEL, input="Name a routing algorithm.", max_output_tokens=6)
    assert response.usage.output_tokens == 6 and response.output_text
    stream = await client.responses.create(model=MODEL, input="Name a routing algorithm.", max_output_tokens=6,
                                           stream=True)
    deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == response.output_text
    follow = await client.responses.create(model=MODEL, input="Another one?", previous_response_id=response.id,
                                           max_output_tokens=4)
    assert follow.previous_response_id == response.id and follow.usage.input_tokens > response.usage.input_tokens

    vectors = await client.embeddings.create(model=EMBED, input=["red bike", "blue car"])
    assert [len(d.embedding) for d in vectors.data] == [32, 32] and vectors.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model=MODEL, input="not an embedding model")
