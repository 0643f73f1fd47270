"""The seams between the request flow and the policy and cache areas.

`Gateway` asks a `Planner` where a request should go (pools in preference order, router, SLO,
cache policy) and asks a `ResponseCache` whether it can answer without a backend. The default
planner serves every pool of the requested model with one router; the policy area provides the
YAML-driven planner and the cache area the semantic cache. Both are injected at the
composition root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fleetgate.core.defaults import DEFAULT_KEY_BLOCKS
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Where and how one request should be served."""

    pools: tuple[str, ...]  # candidate pools, in preference order when `pools_ranked`
    router: str  # routing algorithm name: dualmap, round-robin, least-loaded, ...
    rule: str  # the policy rule that matched (for headers, metrics, explain)
    profile: WorkloadProfile
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    priority: int = 0
    cache_policy: str | None = None  # the category cache policy to apply; None bypasses the cache
    key_blocks: int = DEFAULT_KEY_BLOCKS  # DualMap affinity key length in prefix blocks
    router_params: tuple[tuple[str, Any], ...] = ()  # the router's constructor arguments, sorted by name
    pools_ranked: bool = True  # True: spill to the next pool only when one is unhealthy or over the SLO;
    # False: any of them, whichever promises the lowest TTFT
    instances: tuple[str, ...] | None = None  # only these instances (a stored response's holder); None: any


def plan_summary(plan: RoutePlan) -> str:
    """One line for the `x-fleetgate-plan` debug header: the profile and the decision, never the prompt."""
    p = plan.profile
    slo = "" if plan.ttft_slo_s is None else round(plan.ttft_slo_s * 1000)
    return (
        f"rule={plan.rule}; pools={','.join(plan.pools)}; router={plan.router}; category={p.category}; "
        f"topics={','.join(f'{c}:{score:.2f}' for c, score in p.category_candidates) or 'none'}; "
        f"api={p.api}; prompt_tokens={p.prompt_tokens}; output_tokens={p.output_tokens}; shape={p.shape}; "
        f"context={p.context_class}; agentic={str(p.agentic).lower()}; turns={p.turns}; "
        f"ttft_slo_ms={slo}; cache={plan.cache_policy or 'off'}"
    )


class Planner(Protocol):
    async def plan(self, request: InferenceRequest) -> RoutePlan:
        """Classify `request` and choose its plan; raises a GatewayError for unknown models.
        Async because topic classification may embed the prompt, which must not block the loop."""
        ...


@dataclass(frozen=True, slots=True)
class CacheHit:
    text: str  # the cached completion text
    finish_reason: str
    similarity: float  # cosine of the query and the cached question; 1.0 for an exact hit
    verifier_score: float | None = None  # the verifier's score of the pair; None: exact hit or verification off
    usage: Usage | None = None  # what the answer cost when the backend produced it; None: stored before usage was kept


@dataclass(frozen=True, slots=True)
class CacheMiss:
    """A cacheable miss: pass it back to `store` with the response once it completed cleanly."""

    key: object


@dataclass(frozen=True, slots=True)
class CacheBypass:
    reason: str  # e.g. "disabled", "not-cacheable", "error"


CacheLookup = CacheHit | CacheMiss | CacheBypass


class ResponseCache(Protocol):
    async def lookup(self, request: InferenceRequest, plan: RoutePlan) -> CacheLookup:
        """Never raises: any failure is a bypass or a miss."""
        ...

    async def store(self, miss: CacheMiss, text: str, finish_reason: str, usage: Usage | None = None) -> None:
        """Remember a completed response (only called for responses that ended cleanly) with the usage
        the backend reported for it, which a hit on it reports again."""
        ...

    def release(self, miss: CacheMiss) -> None:
        """The miss's upstream call failed: identical requests waiting on it go upstream now."""
        ...

    def set_pool_pressure(self, pool: str, over_slo: bool) -> None:
        """`pool` went over (or back under) its TTFT SLO: the cache may relax for its categories."""
        ...

    async def feedback(self, request_id: str, tenant: str) -> bool:
        """The client of `request_id` (the gateway's x-request-id) reports its cache hit wrong: drop the entry
        that served it. False when no hit served to `tenant` has that id (which reason is never told)."""
        ...
