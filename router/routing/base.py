"""The `Router` protocol every routing algorithm implements, and what it sees.

A router picks one instance of one pool for one request. It sees the pool's healthy instances
with their load (`InstanceView`: scraped from vLLM plus this replica's own in-flight counts) and
a `RouteRequest` carrying the cheap request facts computed once upstream (prefix block hashes,
token counts, session id, SLO). It returns the instances in preference order: the proxy tries the
first and falls back to the next ones before the first byte.

Routers keep only replica-local state (ring layouts, an approximate prefix tree, counters) and
are told what happened through `on_dispatch` / `on_first_token` / `on_finish`; two replicas never
talk. The same router objects drive the gateway and the discrete-event simulator.

A router may also be a `ResendingRouter` (DualMap is): while a streaming request still waits for
its first byte at one instance, the gateway asks it every `resend_check_s` whether to cancel it
there and send it elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, TypeGuard, runtime_checkable

from fleetgate.core.defaults import DEFAULT_KEY_BLOCKS
from fleetgate.pools.model import Endpoint
from fleetgate.pools.profiles import GpuProfile


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a router may know about a request; built once per request, never mutated."""

    request_id: str
    prefix_hashes: tuple[int, ...]  # chained xxh3 of the canonical prompt's 256-char blocks
    prompt_tokens: int
    expected_output_tokens: int = 256
    session_id: str | None = None
    ttft_slo_s: float | None = None
    key_blocks: int = DEFAULT_KEY_BLOCKS  # how many leading prefix blocks form the affinity key
    category: str = "general"


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One healthy candidate instance and its load, as this replica sees it right now."""

    endpoint: Endpoint
    profile: GpuProfile
    waiting: int = 0  # scraped vllm:num_requests_waiting
    running: int = 0  # scraped vllm:num_requests_running
    kv_usage_ratio: float = 0.0
    local_inflight: int = 0  # requests this replica has sent there and not finished
    local_queued_prefill_tokens: int = 0  # prompt tokens sent there still without a first token

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def load(self) -> int:
        """Outstanding requests: the larger of what vLLM reported and what we know we sent."""
        return max(self.waiting + self.running, self.local_inflight)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen instance first, then fallbacks in order; `reason` is a short metric label."""

    ordered: tuple[Endpoint, ...]
    reason: str
    estimated_ttft_s: float | None = None  # the chosen instance's TTFT estimate, for routers that make one

    @property
    def chosen(self) -> Endpoint:
        return self.ordered[0]


class Router(Protocol):
    """A routing algorithm; see the module docstring for the contract."""

    name: str

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        """Order `instances` (non-empty, all healthy, one pool) for `request`."""
        ...

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        """The request was sent to `endpoint`."""
        ...

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        """`endpoint` produced the request's first token (its prefill is done)."""
        ...

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float, ok: bool) -> None:
        """The request ended at `endpoint` (`ok` False on error, abort or cancel)."""
        ...


@runtime_checkable
class ResendingRouter(Router, Protocol):
    """A router that can move a request still queued at one instance to another (cancel-and-resend)."""

    def resend(
        self, request: RouteRequest, current: Endpoint, instances: Sequence[InstanceView], now_s: float
    ) -> RouteDecision | None:
        """Where to send `request` instead of `current`, where it has no first token yet; None: stay."""
        ...


_RESENDS: dict[type, bool] = {}


def resends(router: Router) -> TypeGuard[ResendingRouter]:
    """`isinstance(router, ResendingRouter)`, decided once per router class: a runtime Protocol
    check walks every member (~25 us on Python 3.11), too much for each streaming request."""
    kind = type(router)
    known = _RESENDS.get(kind)
    if known is None:
        known = _RESENDS[kind] = isinstance(router, ResendingRouter)
    return known
