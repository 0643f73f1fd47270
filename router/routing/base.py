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

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence, TypeGuard, runtime_checkable

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
    stream: bool = True  # False: the "first token" the router hears of is the whole answer
    kv_hashes: tuple[int, ...] = ()  # the prompt's KV-block keys as the pool's engines key them (precise mode); () when unknown
    adapter: str | None = None  # the LoRA adapter asked for (the gateway puts its holders first: router/lora.py)


class KvView(Protocol):
    """Exact prefix-cache contents of one instance (precise mode): kept from the instance's KV
    events by the registry, or read from the engine itself in the simulator."""

    @property
    def live(self) -> bool:
        """True while the contents are known to be current (events flowing); else routers fall
        back to their own approximate view."""
        ...

    @property
    def block_tokens(self) -> int:
        """Tokens per KV block (vLLM's block_size)."""
        ...

    def matched_blocks(self, kv_hashes: Sequence[int]) -> int:
        """How many leading blocks of `kv_hashes` the instance holds in its prefix cache."""
        ...


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
    scraped_at_s: float | None = None  # when waiting/running were scraped (the router's clock); None: unknown
    kv: KvView | None = None  # exact cache contents where the instance publishes KV events (precise mode)
    load: int = field(init=False)  # outstanding requests: the larger of what vLLM reported and what we know we sent

    def __post_init__(self) -> None:
        # Computed once: routers read it for many instances per decision.
        object.__setattr__(self, "load", max(self.waiting + self.running, self.local_inflight))

    @property
    def name(self) -> str:
        return self.endpoint.name


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen instance first, then fallbacks in order; `reason` is a short metric label.

    Fallbacks matter only when the first choice fails, so a router may rank most of them lazily:
    `head` holds what it ranked while deciding (the chosen instance first), `tail` ranks the rest
    on demand. `ordered` is the whole order; the gateway walks `attempts(n)` instead, which
    ranks the tail only when the head runs out."""

    head: tuple[Endpoint, ...]
    reason: str
    estimated_ttft_s: float | None = None  # the chosen instance's TTFT estimate, for routers that make one
    tail: Callable[[], Sequence[Endpoint]] | None = None

    @property
    def chosen(self) -> Endpoint:
        return self.head[0]

    @property
    def ordered(self) -> tuple[Endpoint, ...]:
        return self.head if self.tail is None else (*self.head, *self.tail())

    def attempts(self, limit: int) -> Iterator[Endpoint]:
        """The first `limit` instances in order, the tail ranked only if they are needed."""
        yield from self.head[:limit]
        if self.tail is not None and limit > len(self.head):
            yield from self.tail()[: limit - len(self.head)]


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
