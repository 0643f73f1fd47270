"""Plans for the APIs the gateway forwards without classifying or caching them (core/request.py
PASS_THROUGH_APIS), so they still take the gateway's own path: admission, retries, local load,
metrics and usage accounting.

- embeddings: the model's `embed` pools (fleet file `serves`), least loaded first; a prompt to be
  embedded is read once, so prefix affinity buys nothing.
- tokenize, detokenize: any pool of the model, least loaded.
- responses: planned as chat is (the policy's pools and router: a conversation keeps its prefix),
  on `generate` pools, never cached. A request that continues a stored response
  (`previous_response_id`) goes to the instance that stores it: found by asking the model's
  instances for it (`GET /v1/responses/{id}`, vLLM's own lookup, so every gateway replica finds
  the same one); the holder is remembered, and asked again each time, so a request never goes to
  an instance that lost it (a clear 404 instead).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, Mapping

import aiohttp

from fleetgate.core.errors import GatewayError, InvalidRequestError, ModelNotFoundError
from fleetgate.core.plan import Planner, RoutePlan
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest
from fleetgate.pools.model import Endpoint, FleetSnapshot

HOLDERS_KEPT = 65536  # response id -> instance, most recent first; older ones are looked up again


class ResponseNotFoundError(GatewayError):
    """No instance of the model holds the stored response a request continues (it was never stored, or
    the instance that stored it left the fleet or restarted)."""

    status = 404
    error_type = "invalid_request_error"
    code = "previous_response_not_found"


class PassThroughPlanner:
    def __init__(self, snapshot: Callable[[], FleetSnapshot], session: Callable[[], aiohttp.ClientSession],
                 auth: Callable[[str], Mapping[str, str]], *, lookup_timeout_s: float = 5.0) -> None:
        """`session`: the probe session; `auth`: the headers that carry a pool's credential."""
        self._snapshot = snapshot
        self._session = session
        self._auth = auth
        self._lookup_timeout_s = lookup_timeout_s
        self._holders: OrderedDict[str, str] = OrderedDict()

    async def plan(self, request: InferenceRequest, planner: Planner) -> RoutePlan:
        """`planner`: the one chat uses now (a policy reload replaces it), for responses."""
        snapshot = self._snapshot()
        pools = [p for p in snapshot.pools.values() if p.model == request.model]
        if not pools:
            known = ", ".join(snapshot.models()) or "none"
            raise ModelNotFoundError(f"The model `{request.model}` does not exist. Models served here: {known}.",
                                     param="model")
        if request.api in ("embeddings", "responses"):
            wanted = "embed" if request.api == "embeddings" else "generate"
            pools = [p for p in pools if p.serves == wanted]
            if not pools:
                raise InvalidRequestError(f"the model `{request.model}` does not serve /v1/{request.api} here",
                                          param="model")
        if request.api != "responses":
            return RoutePlan(pools=tuple(p.name for p in pools), router="least-loaded", rule=request.api,
                             profile=_profile(request), pools_ranked=False)
        plan = replace(await planner.plan(request), cache_policy=None)
        plan = replace(plan, pools=tuple(name for name in plan.pools if snapshot.pools[name].serves == "generate"))
        previous = request.body.get("previous_response_id")
        if not isinstance(previous, str):
            return plan
        holder = await self._holder(previous, [e for p in pools for e in snapshot.healthy(p.name)])
        return replace(plan, pools=(holder.pool,), instances=(holder.name,), pools_ranked=True)

    async def _holder(self, response_id: str, candidates: list[Endpoint]) -> Endpoint:
        """The healthy instance that stores `response_id`: the one remembered if it still has it (one
        lookup: it may have restarted or left since), else whichever has it (all asked at once)."""
        known = next((e for e in candidates if e.name == self._holders.get(response_id)), None)
        found = known if known is not None and await self._has(known, response_id) else None
        if found is None:
            others = [e for e in candidates if e is not known]
            answers = await asyncio.gather(*(self._has(e, response_id) for e in others))
            found = next((e for e, has in zip(others, answers) if has), None)
        if found is None:
            raise ResponseNotFoundError(f"no instance of this model holds response {response_id!r}: it was not "
                                        "stored, or the instance that stored it has left the fleet",
                                        param="previous_response_id")
        self._holders[response_id] = found.name
        self._holders.move_to_end(response_id)
        if len(self._holders) > HOLDERS_KEPT:
            self._holders.popitem(last=False)
        return found

    async def _has(self, endpoint: Endpoint, response_id: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=self._lookup_timeout_s)
        try:
            async with self._session().get(f"{endpoint.url}/v1/responses/{response_id}", timeout=timeout,
                                           headers=self._auth(endpoint.pool)) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False


def _profile(request: InferenceRequest) -> WorkloadProfile:
    """What the routers and metrics need of a request nobody classifies."""
    return WorkloadProfile(api=request.api, model=request.model, tenant=request.tenant,
                           prompt_tokens=request.prompt_tokens, output_tokens=0, turns=1, agentic=False,
                           session_id=request.session_id, shape="prefill-heavy", context_class="short")
