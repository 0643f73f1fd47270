"""On Ray Serve the embedding model is one shared deployment: gateway replicas (two here) embed
through it, batched, and load no model themselves. Deployed beside deploy/serve.yaml's app on the
session's Ray, with the built-in policy (topic exemplars), requests through Serve's proxy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from support.gateway import MODEL

from fleetgate.app.embedder_deployment import DEPLOYMENT_NAME
from fleetgate.app.settings import ServeCommandSettings

pytestmark = pytest.mark.e2e

APP = "fleetgate-embedder-test"
POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


async def test_gateway_replicas_embed_through_one_shared_deployment(serve_url: str,
                                                                    serve_settings: ServeCommandSettings) -> None:
    from ray import serve

    from fleetgate.app.serve import build_app

    args = {**serve_settings.serve_args(), "policy": str(POLICY), "semantic_cache": False, "num_replicas": 2}
    serve.run(build_app(args), name=APP, route_prefix="/shared", blocking=False)
    try:
        deadline = time.monotonic() + 180
        while serve.status().applications[APP].status != "RUNNING":
            assert time.monotonic() < deadline, serve.status().applications[APP]
            await asyncio.sleep(0.5)
        deployments = serve.status().applications[APP].deployments
        assert deployments["fleetgate"].replica_states.get("RUNNING") == 2
        assert deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING") == 1  # one model for both replicas

        body = {"model": MODEL, "messages": [{"role": "user", "content": "How would I reverse a linked list?"}]}
        async with aiohttp.ClientSession() as session:
            for _ in range(4):  # whichever replica answers, its topic came from the shared model
                async with session.post(serve_url + "/shared/admin/explain", json=body) as response:
                    assert response.status == 200, await response.text()
                    profile = (await response.json())["profile"]
                assert (profile["category"], profile["category_source"]) == ("code", "exemplar")
        embedder = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP)
        assert await embedder.loaded.remote()
    finally:
        serve.delete(APP)
