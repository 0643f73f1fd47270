"""`fleetgate bench router`: what one routing decision costs, and what a scale event moves.

Decision cost is measured on warmed routers (their trees, estimators and rings hold the traffic
of `warm` earlier requests sharing a few hundred prefixes) over views with random loads, for
pools of 8, 64 and 512 instances and prompts of 1k and 32k tokens. Prompt hashing is not part
of the decision (it is computed once upstream, for every router alike).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from fleetgate.core.defaults import DEFAULT_GPU
from fleetgate.core.prefix import prefix_hashes
from fleetgate.core.tokens import CHARS_PER_TOKEN
from fleetgate.pools.model import Endpoint
from fleetgate.pools.profiles import get_profile
from fleetgate.router.routing.base import InstanceView, RouteRequest
from fleetgate.router.routing.registry import ROUTER_NAMES, make_router
from fleetgate.router.routing.ring import DualRing, membership_of, remap_fraction


@dataclass(frozen=True, slots=True)
class DecisionCost:
    router: str
    instances: int
    prompt_tokens: int
    p50_us: float
    p99_us: float


def _views(n: int, rng: random.Random) -> list[InstanceView]:
    profile = get_profile(DEFAULT_GPU)
    return [
        InstanceView(
            Endpoint(f"i{i}", f"http://10.0.0.{i}:8000", "p", "m"), profile,
            waiting=rng.randrange(4), running=rng.randrange(40), kv_usage_ratio=rng.random() * 0.8,
            local_inflight=rng.randrange(8), local_queued_prefill_tokens=rng.randrange(20000),
        )
        for i in range(n)
    ]


def _requests(count: int, prompt_tokens: int, rng: random.Random, groups: int = 300) -> list[RouteRequest]:
    """Requests whose prompts share one of `groups` long prefixes (half the prompt) and differ after."""
    chars = prompt_tokens * CHARS_PER_TOKEN
    out = []
    for k in range(count):
        group = rng.randrange(groups)
        text = (f"group {group} shared context " * (chars // 40 + 1))[: chars // 2]
        text += (f"request {k} question " * (chars // 40 + 1))[: chars - len(text)]
        out.append(RouteRequest(f"r{k}", prefix_hashes(text), prompt_tokens, 256, None, 2.0, 2))
    return out


def decision_cost(router_name: str, n: int, prompt_tokens: int, decisions: int, warm: int, seed: int) -> tuple[float, float]:
    """(p50, p99) microseconds of route() on a warmed router."""
    rng = random.Random(seed)
    views = _views(n, rng)
    router = make_router(router_name)
    requests = _requests(warm + decisions, prompt_tokens, rng)
    for request in requests[:warm]:
        decision = router.route(request, views, 0.0)
        router.on_dispatch(request, decision.chosen, 0.0)
        router.on_first_token(request, decision.chosen, 0.0)
    samples = []
    clock = time.perf_counter_ns
    for request in requests[warm:]:
        start = clock()
        router.route(request, views, 1.0)
        samples.append((clock() - start) / 1e3)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def bench_decisions(
    sizes: Sequence[int], prompt_sizes: Sequence[int], routers: Iterable[str] = ROUTER_NAMES,
    decisions: int = 400, warm: int = 400, runs: int = 3, progress=None,
) -> list[DecisionCost]:
    """Median over `runs` of each (router, size, prompt) configuration's p50 and p99."""
    results = []
    for router in routers:
        for n in sizes:
            for tokens in prompt_sizes:
                measured = [decision_cost(router, n, tokens, decisions, warm, seed) for seed in range(runs)]
                results.append(DecisionCost(router, n, tokens, statistics.median(m[0] for m in measured), statistics.median(m[1] for m in measured)))
                if progress is not None:
                    progress.update(1)
    return results


@dataclass(frozen=True, slots=True)
class Remap:
    instances: int
    change: str  # "add" or "remove"
    pair_moved_ratio: float  # DualMap: keys whose (c1, c2) pair changed
    owner_moved_ratio: float  # one ring (consistent-hash): keys whose owner changed
    ideal_pair_ratio: float  # 2/N: only the keys whose candidates involve the changed instance


def bench_remap(sizes: Sequence[int], keys: int = 20000, seeds: tuple[int, int] = (0xD1A1, 0x3A9B)) -> list[Remap]:
    def endpoints(n: int) -> list[Endpoint]:
        return [Endpoint(f"i{i}", f"http://h{i}", "p", "m") for i in range(n)]

    sample = list(range(0, keys * 7919, 7919))
    out = []
    for n in sizes:
        before = DualRing(membership_of(endpoints(n)), seeds)
        for change, after_n in (("add", n + 1), ("remove", n - 1)):
            after_eps = endpoints(n + 1) if change == "add" else endpoints(n)[1:]
            after = DualRing(membership_of(after_eps), seeds)
            owner = sum(before.first.lookup(k) != after.first.lookup(k) for k in sample) / len(sample)
            out.append(Remap(n, change, remap_fraction(before, after, sample), owner, 2 / max(n, after_n)))
    return out
