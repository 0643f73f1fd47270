"""The planner used when no policy file is given: every pool serving the model, one router.

The pools that can hold the prompt are offered unranked (the gateway takes whichever promises the
lowest TTFT, or the least loaded); when none can, all are, and the backend's own context-length
error reaches the client. `fleetgate serve --worker-urls ... --model M` needs nothing else.
"""

from __future__ import annotations

from typing import Mapping

from fleetgate.core.errors import ModelNotFoundError
from fleetgate.core.plan import RoutePlan
from fleetgate.core.request import InferenceRequest
from fleetgate.policies.classify import WorkloadClassifier
from fleetgate.pools.model import Pool


class StaticPlanner:
    def __init__(self, pools: Mapping[str, Pool], router: str, *, ttft_slo_s: float | None = None,
                 classifier: WorkloadClassifier | None = None) -> None:
        self._pools_by_model: dict[str, tuple[Pool, ...]] = {}
        self.set_pools(pools)
        self._router = router
        self._ttft_slo_s = ttft_slo_s
        self._classifier = classifier or WorkloadClassifier()

    def set_pools(self, pools: Mapping[str, Pool]) -> None:
        """Plan over `pools` from now on (the fleet changed live)."""
        by_model: dict[str, tuple[Pool, ...]] = {}
        for pool in pools.values():
            by_model[pool.model] = by_model.get(pool.model, ()) + (pool,)
        self._pools_by_model = by_model

    async def plan(self, request: InferenceRequest) -> RoutePlan:
        pools = self._pools_by_model.get(request.model)
        if pools is None:
            known = ", ".join(sorted(self._pools_by_model)) or "none"
            raise ModelNotFoundError(f"The model `{request.model}` does not exist. Models served here: {known}.",
                                     param="model")
        profile = self._classifier.classify(request)
        fitting = tuple(p.name for p in pools if p.max_context_tokens >= profile.prompt_tokens)
        return RoutePlan(pools=fitting or tuple(p.name for p in pools), router=self._router, rule="default",
                         profile=profile, ttft_slo_s=self._ttft_slo_s, pools_ranked=False)
