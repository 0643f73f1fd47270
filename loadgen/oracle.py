"""The oracle router: the simulator's reference for "close to the limit", not a product feature.

Where a real router sees scraped counters that are up to half a second stale (and, in precise
mode, the prefix cache through KV events), the oracle reads every emulated engine directly: its
exact prefix cache, and its exact prefill queue. It sends each request where its predicted TTFT
is lowest. With FCFS chunked prefill (pools/emulator/engine.py) a request added now gets its
first token once the engine has prefilled everything ahead of it and then its own uncached
tokens, while the running batch decodes alongside:

    ttft = rest of the step in flight
         + steps * step_s(decoding batch) + (backlog + own) / prefill_tokens_per_s
    steps = ceil((backlog + own) / (max_num_batched_tokens - decoding batch))

`backlog` is `Engine.prefill_backlog()` (running requests' unfinished prefill, waiting requests'
tokens beyond what the cache or a request ahead of them will hold). `own` is the prompt minus its
longest prefix that the instance holds or that a request already sent there will have written
by the time ours runs (the oracle's own book of what it sent and is not yet prefilled). Prices
come from the instance's GpuProfile, the model the engine steps by. It needs engine internals, so
it lives here and is not registered in router/routing/registry.py; the simulator knows its name.

`work_weight` (DualMap's rule, default 1) charges the request's own uncached prefill once more:
lowest TTFT alone is greedy, and recomputing a prefix that another instance holds is GPU time
taken from every later request. On Mooncake (8 x H100, 2 s SLO, rate x7.66) it raised the
oracle's hit ratio from 0.283 to 0.347 and cut TTFT p99 from 1.41 s to 1.28 s.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

from fleetgate.core.tokens import KV_BLOCK_TOKENS
from fleetgate.pools.emulator.engine import EngineStats
from fleetgate.pools.model import Endpoint
from fleetgate.pools.profiles import GpuProfile
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest

ORACLE = "oracle"


class ExactEngine(Protocol):
    """What the oracle reads of an engine (fleetgate.pools.emulator.engine.Engine has it)."""

    @property
    def total_blocks(self) -> int: ...

    def matched_blocks(self, block_hashes: tuple[int, ...]) -> int: ...
    def prefill_backlog(self) -> int: ...
    def stats(self) -> EngineStats: ...


class ExactInstance(Protocol):
    """One simulated instance: its engine and when the step it is running ends."""

    @property
    def engine(self) -> ExactEngine: ...

    @property
    def step_end_s(self) -> float: ...  # <= now when idle


def prefill_ttft_s(profile: GpuProfile, work_tokens: int, decoding: int, context_tokens: int) -> float:
    """Time to prefill `work_tokens` in chunked steps while `decoding` sequences (holding
    `context_tokens` of KV) decode alongside, as the engine prices its steps."""
    if work_tokens <= 0:
        return 0.0
    decoding = min(decoding, profile.max_num_seqs)
    steps = -(-work_tokens // max(1, profile.max_num_batched_tokens - decoding))
    return steps * profile.step_time_s(0, decoding, context_tokens) + work_tokens / profile.prefill_tokens_per_s


class Oracle:
    """Lowest exact predicted TTFT over every instance (see the module docstring)."""

    name = ORACLE

    def __init__(self, instances: Mapping[str, ExactInstance], work_weight: float = 1.0) -> None:
        self.instances = instances
        self.work_weight = work_weight
        self._pending: dict[str, dict[int, int]] = {name: {} for name in instances}  # KV block -> requests sent, not yet prefilled
        self._sent: dict[str, str] = {}  # request id -> instance, until its first token
        self._backlogs: dict[str, tuple[float, int]] = {}  # instance -> (step end, backlog) until it steps or gets a request

    def cached_tokens(self, request: RouteRequest, name: str) -> int:
        """Prompt tokens `name` will have cached when the request's turn comes (the last token is
        always computed)."""
        hashes = request.kv_hashes
        blocks = self.instances[name].engine.matched_blocks(hashes)
        pending = self._pending[name]
        if pending:
            ahead = 0
            for h in hashes:
                if h not in pending:
                    break
                ahead += 1
            blocks = max(blocks, ahead)
        return min(blocks * KV_BLOCK_TOKENS, request.prompt_tokens - 1)

    def predict(self, request: RouteRequest, view: InstanceView, now_s: float) -> tuple[float, int]:
        """(predicted TTFT, own uncached prompt tokens) of `request` on `view`'s instance."""
        inst = self.instances[view.name]
        engine = inst.engine
        own = request.prompt_tokens - self.cached_tokens(request, view.name)
        stats = engine.stats()
        profile = view.profile
        context = int(stats.kv_usage_ratio * engine.total_blocks * KV_BLOCK_TOKENS)
        ttft = max(0.0, inst.step_end_s - now_s) + prefill_ttft_s(profile, self._backlog(view.name) + own, stats.running, context)
        return ttft, own

    def _backlog(self, name: str) -> int:
        """The engine's prefill backlog, recomputed only after it stepped or got a request (it
        walks the queue, which is long under overload)."""
        step_end_s = self.instances[name].step_end_s
        known = self._backlogs.get(name)
        if known is not None and known[0] == step_end_s:
            return known[1]
        backlog = self.instances[name].engine.prefill_backlog()
        self._backlogs[name] = (step_end_s, backlog)
        return backlog

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        scored = []
        for view in instances:
            ttft, own = self.predict(request, view, now_s)
            score = ttft + self.work_weight * own / view.profile.prefill_tokens_per_s
            scored.append((score, ttft, view.name, view))
        scored.sort(key=lambda s: (s[0], s[1], s[2]))
        best = scored[0]
        return RouteDecision(tuple(s[3].endpoint for s in scored), "oracle", best[1])

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self._sent[request.request_id] = endpoint.name
        self._backlogs.pop(endpoint.name, None)
        pending = self._pending[endpoint.name]
        for h in request.kv_hashes:
            pending[h] = pending.get(h, 0) + 1

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self._prefilled(request)

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float, ok: bool) -> None:
        self._prefilled(request)

    def _prefilled(self, request: RouteRequest) -> None:
        """The request's blocks are in the engine's cache now (or it was aborted): drop them from the book."""
        name = self._sent.pop(request.request_id, None)
        if name is not None:
            pending = self._pending[name]
            for h in request.kv_hashes:
                count = pending[h] - 1
                if count:
                    pending[h] = count
                else:
                    del pending[h]

