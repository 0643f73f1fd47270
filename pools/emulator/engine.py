"""An engine model of one vLLM instance (v1 scheduler), advanced on an explicit clock.

Neither asyncio nor wall time appears here: the HTTP server and the discrete-event simulator
both call `step(now_s)` and get back how long the step took and which tokens it produced.

What is modelled, as vLLM v1 does it:
- continuous batching in scheduler steps: running requests first (decodes and unfinished prefill
  chunks), then waiting requests in FCFS order while `max_num_seqs` and the token budget
  (`max_num_batched_tokens`, chunked prefill) allow;
- paged KV memory in 16-token blocks; automatic prefix caching keyed by chained block hashes;
  freed blocks stay cached and are evicted least-recently-freed first (a request's tail blocks
  before its head blocks); a waiting request is admitted only when its blocks fit;
- preemption by recomputation when a running request needs a block and none is free: the most
  recently admitted running request is freed and put back at the head of the queue;
- step time from the GPU profile (pools/profiles.py).

Only prompt blocks carry hashes (generated-token blocks are anonymous), so a follow-up turn reuses
the previous turn's prompt but not its answer. Cost per step is O(running requests); per-block
work happens once per block a request allocates, hits or frees.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol

from fleetgate.core.tokens import KV_BLOCK_TOKENS
from fleetgate.pools.profiles import GpuProfile

_B = KV_BLOCK_TOKENS


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One request as the engine sees it: token counts and prompt block identity, no text."""

    request_id: str
    block_hashes: tuple[int, ...]  # fleetgate.core.tokens.kv_block_hashes(prompt_text): full 16-token blocks, chained
    prompt_tokens: int
    max_tokens: int  # output tokens to generate (exactly this many unless aborted or over max_model_len)
    arrival_s: float


class KvListener(Protocol):
    """Told of every prefix-cache block the engine stores or evicts (the emulator publishes them
    as vLLM's KV events); called inside `step`, so it must only record."""

    def stored(self, request_id: str, index: int, block_hash: int, parent_hash: int | None) -> None:
        """Prompt block `index` of the request is now cached under `block_hash`."""
        ...

    def removed(self, block_hash: int) -> None:
        """The cached block `block_hash` was evicted."""
        ...


@dataclass(frozen=True, slots=True)
class RequestStats:
    """What happened to one finished or aborted request (times are engine times in seconds)."""

    request_id: str
    arrival_s: float
    first_token_s: float | None
    finished_s: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    preemptions: int
    finish_reason: str  # "length" | "abort"

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        if self.first_token_s is None or self.output_tokens < 2:
            return 0.0
        return (self.finished_s - self.first_token_s) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class StepOutput:
    duration_s: float
    new_tokens: dict[str, int]  # request_id -> tokens emitted by this step (the first token counts)
    finished: list[RequestStats]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Load and counters, named after the vLLM metrics they feed (see server.py)."""

    running: int
    waiting: int
    kv_usage_ratio: float  # blocks held by running requests / all blocks (cached free blocks excluded)
    kv_cached_blocks: int  # blocks with a prefix hash, in use or evictable
    prefix_queries_tokens: int
    prefix_hits_tokens: int
    preemptions_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    finished_total: int


class _Running:
    """Mutable scheduler state of one request (internal)."""

    __slots__ = (
        "req", "max_tokens", "computed", "output", "n_blocks", "hashes", "next_hash",
        "cached_tokens", "first_token_s", "preemptions", "admitted_once",
    )

    def __init__(self, req: EngineRequest, max_tokens: int) -> None:
        self.req = req
        self.max_tokens = max_tokens
        self.computed = 0  # tokens whose KV is in the cache
        self.output = 0  # tokens generated so far
        self.n_blocks = 0  # blocks held, hashed or not
        self.hashes: list[int] = []  # prefix-cache blocks this request holds a reference on
        self.next_hash = 0  # index of the next prompt block that may be registered in the cache
        self.cached_tokens = 0
        self.first_token_s: float | None = None
        self.preemptions = 0
        self.admitted_once = False


class Engine:
    """One vLLM instance: scheduler, paged KV cache with prefix caching, and a step-time model."""

    def __init__(self, profile: GpuProfile, *, kv_cache_tokens: int | None = None, enable_prefix_caching: bool = True) -> None:
        self.profile = profile
        self.total_blocks = (kv_cache_tokens if kv_cache_tokens is not None else profile.kv_cache_tokens) // _B
        if self.total_blocks < 1:
            raise ValueError("the KV cache must hold at least one 16-token block")
        self.enable_prefix_caching = enable_prefix_caching
        self.kv_listener: KvListener | None = None
        # vLLM refuses to start when max_model_len does not fit in the KV cache; we clip instead.
        self.max_model_len = min(profile.max_model_len, self.total_blocks * _B)
        self._free_blocks = self.total_blocks  # never-hashed free blocks
        self._refs: dict[int, int] = {}  # block hash -> requests holding it (0: evictable, in _lru)
        self._lru: OrderedDict[int, None] = OrderedDict()  # evictable cached blocks, oldest first
        self._waiting: deque[_Running] = deque()
        self._running: list[_Running] = []
        self._by_id: dict[str, _Running] = {}
        self._now_s = 0.0
        self._queries = 0
        self._hits = 0
        self._preemptions = 0
        self._prompt_total = 0
        self._generation_total = 0
        self._finished_total = 0

    # -- public API ---------------------------------------------------------------------------

    def add(self, request: EngineRequest) -> None:
        """Queue a request. Raises ValueError when its prompt alone reaches max_model_len (vLLM's 400);
        an output that would overrun max_model_len is cut short (finish_reason "length")."""
        if request.request_id in self._by_id:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if request.prompt_tokens < 1:
            raise ValueError("a request needs at least one prompt token")
        if request.prompt_tokens >= self.max_model_len:
            raise ValueError(
                f"prompt of {request.prompt_tokens} tokens does not fit max_model_len {self.max_model_len}"
            )
        max_tokens = max(1, min(request.max_tokens, self.max_model_len - request.prompt_tokens))
        state = _Running(request, max_tokens)
        self._by_id[request.request_id] = state
        self._waiting.append(state)
        self._now_s = max(self._now_s, request.arrival_s)

    def abort(self, request_id: str, now_s: float | None = None) -> RequestStats | None:
        """Drop a request wherever it is and free its blocks; None when it is unknown or finished."""
        state = self._by_id.pop(request_id, None)
        if state is None:
            return None
        if state in self._running:
            self._running.remove(state)
        else:
            self._waiting.remove(state)
        self._free(state)
        return self._stats_of(state, self._now_s if now_s is None else now_s, "abort")

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def stats(self) -> EngineStats:
        used = self.total_blocks - self._free_blocks - len(self._lru)
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_usage_ratio=used / self.total_blocks,
            kv_cached_blocks=len(self._refs),
            prefix_queries_tokens=self._queries,
            prefix_hits_tokens=self._hits,
            preemptions_total=self._preemptions,
            prompt_tokens_total=self._prompt_total,
            generation_tokens_total=self._generation_total,
            finished_total=self._finished_total,
        )

    def matched_blocks(self, block_hashes: tuple[int, ...]) -> int:
        """How many leading blocks of `block_hashes` the prefix cache holds (in use or evictable):
        what the instance's KV events tell a precise router. Read-only; the simulator's precise
        mode and oracle read the engine, the truth there, instead of an event stream."""
        refs = self._refs
        count = 0
        for h in block_hashes:
            if h not in refs:
                break
            count += 1
        return count

    def prefill_backlog(self) -> int:
        """Tokens to prefill before a request added now is reached (FCFS): the running requests'
        unfinished prefill plus each waiting request's tokens beyond the prefix that the cache,
        or a request ahead of it, will hold by its turn. Read-only, for the simulator's oracle
        router, which prices it on the GPU profile."""
        refs = self._refs if self.enable_prefix_caching else {}
        ahead: set[int] = set()  # prompt blocks that requests ahead will have computed
        backlog = 0
        for state in self._running:
            left = state.req.prompt_tokens + state.output - state.computed
            if left > 1:  # 1 is a decode step
                backlog += left
                ahead.update(state.req.block_hashes)
        for state in self._waiting:
            hashes = state.req.block_hashes
            num_tokens = state.req.prompt_tokens + state.output
            cached = 0
            for h in hashes[: (num_tokens - 1) // _B]:
                if h not in refs and h not in ahead:
                    break
                cached += 1
            backlog += num_tokens - cached * _B
            if self.enable_prefix_caching:
                ahead.update(hashes)
        return backlog

    def step(self, now_s: float) -> StepOutput:
        """Run one scheduler step starting at `now_s`; its tokens and finishes are stamped at
        now_s + duration_s. With nothing to do the step takes no time."""
        if not self._running and not self._waiting:
            return StepOutput(0.0, {}, [])
        budget = self.profile.max_num_batched_tokens
        scheduled: list[tuple[_Running, int]] = []
        preempted = False
        running = self._running
        i = 0
        while i < len(running) and budget > 0:
            state = running[i]
            new = min(state.req.prompt_tokens + state.output - state.computed, budget)
            need = -(-(state.computed + new) // _B) - state.n_blocks
            while need > 0 and not self._take(need):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is state:
                    break
            else:
                state.n_blocks += max(need, 0)
                scheduled.append((state, new))
                budget -= new
                i += 1
                continue
            break  # the request itself was preempted: nothing after it is scheduled
        if not preempted:
            budget = self._admit(budget, scheduled)
        return self._execute(now_s, scheduled)

    # -- scheduling -----------------------------------------------------------------------------

    def _admit(self, budget: int, scheduled: list[tuple[_Running, int]]) -> int:
        """Move waiting requests to running, FCFS, while seats, tokens and blocks allow."""
        waiting = self._waiting
        max_seqs = self.profile.max_num_seqs
        while waiting and budget > 0 and len(self._running) < max_seqs:
            state = waiting[0]
            num_tokens = state.req.prompt_tokens + state.output
            hits = self._lookup(state.req.block_hashes, (num_tokens - 1) // _B)
            hit_tokens = len(hits) * _B
            new = min(num_tokens - hit_tokens, budget)
            total_blocks = -(-(hit_tokens + new) // _B)
            evictable_hits = sum(1 for h in hits if self._refs[h] == 0)
            if total_blocks - len(hits) + evictable_hits > self._free_blocks + len(self._lru):
                break  # head-of-line blocking, as vLLM's FCFS scheduler
            waiting.popleft()
            for h in hits:
                count = self._refs[h]
                if count == 0:
                    del self._lru[h]
                self._refs[h] = count + 1
            self._take(total_blocks - len(hits))
            state.hashes = hits
            state.n_blocks = total_blocks
            state.computed = hit_tokens
            state.next_hash = len(hits)
            self._queries += num_tokens
            self._hits += hit_tokens
            if not state.admitted_once:
                state.admitted_once = True
                state.cached_tokens = hit_tokens
            self._running.append(state)
            scheduled.append((state, new))
            budget -= new
        return budget

    def _execute(self, now_s: float, scheduled: list[tuple[_Running, int]]) -> StepOutput:
        """Price the batch, advance every scheduled request, emit tokens and finish requests."""
        prefill_tokens = 0
        decode_seqs = 0
        context_tokens = 0
        for state, new in scheduled:
            if new == 1 and state.output > 0:
                decode_seqs += 1
                context_tokens += state.computed + 1
            else:
                prefill_tokens += new
        duration = self.profile.step_time_s(prefill_tokens, decode_seqs, context_tokens)
        end_s = now_s + duration
        self._now_s = max(self._now_s, end_s)
        new_tokens: dict[str, int] = {}
        finished: list[RequestStats] = []
        for state, new in scheduled:
            state.computed += new
            if self.enable_prefix_caching and state.next_hash < len(state.req.block_hashes):
                self._register(state)
            if state.computed < state.req.prompt_tokens + state.output:
                continue  # a prefill chunk that does not end the prompt samples nothing
            state.output += 1
            self._generation_total += 1
            new_tokens[state.req.request_id] = 1
            if state.first_token_s is None:
                state.first_token_s = end_s
                self._prompt_total += state.req.prompt_tokens
            if state.output >= state.max_tokens:
                finished.append(self._finish(state, end_s))
        if finished:
            self._running = [s for s in self._running if s.req.request_id in self._by_id]
        return StepOutput(duration, new_tokens, finished)

    def _finish(self, state: _Running, end_s: float) -> RequestStats:
        del self._by_id[state.req.request_id]
        self._free(state)
        self._finished_total += 1
        return self._stats_of(state, end_s, "length")

    @staticmethod
    def _stats_of(state: _Running, finished_s: float, reason: str) -> RequestStats:
        req = state.req
        return RequestStats(
            request_id=req.request_id,
            arrival_s=req.arrival_s,
            first_token_s=state.first_token_s,
            finished_s=finished_s,
            prompt_tokens=req.prompt_tokens,
            cached_tokens=state.cached_tokens,
            output_tokens=state.output,
            preemptions=state.preemptions,
            finish_reason=reason,
        )

    def _preempt(self, state: _Running) -> None:
        """Recompute-style preemption: free everything, restart from the head of the queue."""
        self._free(state)
        state.computed = 0
        state.preemptions += 1
        self._preemptions += 1
        self._waiting.appendleft(state)

    # -- KV blocks ------------------------------------------------------------------------------

    def _lookup(self, block_hashes: tuple[int, ...], max_blocks: int) -> list[int]:
        """The longest cached prefix of `block_hashes`, at most `max_blocks` long (vLLM always
        recomputes the last prompt token, so a fully cached prompt still prefills one block)."""
        if not self.enable_prefix_caching:
            return []
        refs = self._refs
        hits: list[int] = []
        for h in block_hashes[:max_blocks]:
            if h not in refs:
                break
            hits.append(h)
        return hits

    def _take(self, count: int) -> bool:
        """Allocate `count` blocks, evicting least-recently-freed cached blocks if needed."""
        if count <= 0:
            return True
        if count > self._free_blocks + len(self._lru):
            return False
        from_free = min(count, self._free_blocks)
        self._free_blocks -= from_free
        lru, refs, listener = self._lru, self._refs, self.kv_listener
        for _ in range(count - from_free):
            evicted, _ = lru.popitem(last=False)
            del refs[evicted]
            if listener is not None:
                listener.removed(evicted)
        return True

    def _register(self, state: _Running) -> None:
        """Give hashes to prompt blocks this request has just filled, so later requests hit them.
        A block whose hash is already cached (a concurrent twin computed it) stays anonymous."""
        refs, listener = self._refs, self.kv_listener
        upto = min(state.computed // _B, len(state.req.block_hashes))
        hashes = state.req.block_hashes
        for index in range(state.next_hash, upto):
            h = hashes[index]
            if h not in refs:
                refs[h] = 1
                state.hashes.append(h)
                if listener is not None:
                    listener.stored(state.req.request_id, index, h, hashes[index - 1] if index else None)
        state.next_hash = max(state.next_hash, upto)

    def _free(self, state: _Running) -> None:
        """Release a request's blocks: hashed ones become evictable (tail first), the rest free."""
        refs, lru = self._refs, self._lru
        for h in reversed(state.hashes):
            count = refs[h] - 1
            refs[h] = count
            if count == 0:
                lru[h] = None
        self._free_blocks += state.n_blocks - len(state.hashes)
        state.hashes = []
        state.n_blocks = 0
        state.next_hash = 0
