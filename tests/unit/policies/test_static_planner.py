"""The no-policy planner: every pool of the model that can hold the prompt, unranked."""

from __future__ import annotations

import pytest

from fleetgate.core.errors import ModelNotFoundError
from fleetgate.core.request import InferenceRequest
from fleetgate.policies.static_planner import StaticPlanner
from fleetgate.pools.config import parse_fleet

FLEET = parse_fleet(
    "pools:\n"
    "  - {name: small, model: m, gpu: l4, instances: [{url: 'http://h:1'}]}\n"
    "  - {name: big, model: m, gpu: h100, instances: [{url: 'http://h:2'}]}\n"
    "  - {name: other, model: n, gpu: h100, instances: [{url: 'http://h:3'}]}\n"
).to_pools()


def chat(chars: int, model: str = "m") -> InferenceRequest:
    messages = ({"role": "user", "content": "x" * chars},)
    return InferenceRequest(request_id="r", api="chat", model=model, body={}, stream=False, messages=messages)


@pytest.mark.parametrize(("chars", "pools"), [(100, ("small", "big")), (4 * 10_000, ("big",)), (4 * 40_000, ("small", "big"))])
async def test_pools_that_hold_the_prompt_are_offered_unranked(chars: int, pools: tuple[str, ...]) -> None:
    plan = await StaticPlanner(FLEET, "dualmap").plan(chat(chars))
    assert plan.pools == pools and not plan.pools_ranked and plan.router == "dualmap"


async def test_unknown_model_is_a_404_listing_the_served_ones() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        await StaticPlanner(FLEET, "dualmap").plan(chat(10, model="z"))
    assert caught.value.status == 404 and "m, n" in caught.value.message
