"""A bare gateway whose policy embeds nothing never loads the embedding model; one whose policy has
topic exemplars loads it once, in process (a real gateway, a real policy, the openai client)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml
from support.gateway import MODEL, emulators
from support.servers import serve_asgi

from fleetgate.app.compose import Runtime
from fleetgate.app.api import create_app
from fleetgate.app.settings import GatewaySettings

pytestmark = pytest.mark.integration

DEFAULT_POLICY = Path(__file__).resolve().parents[3] / "policies" / "default.yaml"


def keyword_only(tmp_path: Path) -> Path:
    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    for category in document["categories"]:
        category.pop("exemplars", None)
    path = tmp_path / "keywords.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("exemplars", [False, True], ids=["keywords-only", "exemplars"])
async def test_the_model_is_loaded_only_when_the_policy_embeds(tmp_path: Path, exemplars: bool) -> None:
    policy = DEFAULT_POLICY if exemplars else keyword_only(tmp_path)
    async with emulators(1) as servers:
        runtime = Runtime(GatewaySettings(worker_urls=[servers[0].url], model=MODEL, policy=str(policy),
                                          semantic_cache=False))
        assert runtime.policy is not None
        async with serve_asgi(create_app(runtime)) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
            answer = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Tell me about the weather in spring"}],
                max_tokens=3)
            assert answer.usage.completion_tokens == 3
        assert runtime.policy.model.loaded is exemplars
