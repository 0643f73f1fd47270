"""Fleet state: active health probes and vLLM metrics scrapes published as immutable snapshots.

A background task per process (`run`) probes every instance's `/health` and scrapes its `/metrics`
every `probe_interval_s`, then publishes a new `FleetSnapshot`; the request path only reads
`snapshot`, never waits on a probe. Passive health (pools/outliers.py): the gateway reports each
attempt's outcome (`admit`, `report_failure`, `report_success`, `back_off`); consecutive failures, a
refused connection or a latency outlier eject an instance for `eject_cooldown_s`, doubling on repeat.
A probe re-admits it after that (half-open: one trial request, then closed or ejected for longer). With
the defaults a dead instance is out within one refused request, or within one probe interval (0.5 s)
when no request hits it.

Precise mode: for every endpoint with `kv_events` the run loop also keeps a subscription to its
KV-cache events (pools/kv_events.py); `kv_view` hands routers that instance's exact cache
contents and `kv_hashes` keys a prompt the way the pool's engines do.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

import aiohttp

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.request import InferenceRequest
from fleetgate.pools.kv_events import InstanceKvBlocks, KvStatus, KvSubscriptions
from fleetgate.pools.kv_keys import kv_hashes, prompt_keys
from fleetgate.pools.model import Endpoint, EndpointState, FleetSnapshot, Pool
from fleetgate.pools.outliers import OutlierDetector, OutlierPolicy
from fleetgate.pools.scrape import parse_vllm_metrics

log = logging.getLogger("fleetgate.pools")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    probe_interval_s: float
    probe_timeout_s: float
    eject_cooldown_s: float  # the first ejection's length; repeats double it (outliers.max_ejection_s caps)
    probe_timeouts_to_fail: int = 3  # a run of timed-out probes marks an instance down (`_probe`)
    outliers: OutlierPolicy = field(default_factory=OutlierPolicy)


_NOT_YET_PROBED = EndpointState(healthy=False)


class FleetRegistry:
    """Owns the current `FleetSnapshot` of one gateway process."""

    def __init__(self, pools: Mapping[str, Pool], *, clock: Clock = monotonic_clock,
                 policy: HealthPolicy) -> None:
        self._clock = clock
        self._policy = policy
        self.outliers = OutlierDetector(policy.outliers, policy.eject_cooldown_s, clock)
        self._snapshot = FleetSnapshot(version=0, pools=MappingProxyType(dict(pools)))
        self._kv = KvSubscriptions(clock=clock)
        self._adapter_notes: dict[str, dict[str, tuple[float, bool]]] = {}  # endpoint -> adapter -> (when, held)
        self._probe_timeouts: dict[str, int] = {}  # endpoint -> health probes timed out in a row

    @property
    def snapshot(self) -> FleetSnapshot:
        return self._snapshot

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for pool in self._snapshot.pools.values() for e in pool.endpoints]

    def set_pools(self, pools: Mapping[str, Pool]) -> None:
        """Swap the fleet's layout (pools/membership.py): endpoints that stay (same name and URL) keep
        their state; a new one takes no request before its first successful probe."""
        before = {e.name: e.url for e in self.endpoints}
        states = {e.name: self._snapshot.states.get(e.name, EndpointState()) if before.get(e.name) == e.url
                  else _NOT_YET_PROBED for pool in pools.values() for e in pool.endpoints}
        self._publish(MappingProxyType(dict(pools)), states)

    def admit(self, endpoint: Endpoint) -> bool:
        """Whether an attempt may go to `endpoint` now: not ejected nor backing off, and for a half-open
        instance, the one trial (hidden from routing until it is answered)."""
        admitted = self.outliers.admit(endpoint.name, endpoint.pool)
        if admitted and self.outliers.trial_in_flight(endpoint.name):
            self._set_healthy(endpoint, False)
        return admitted

    def report_failure(self, endpoint: Endpoint, kind: str) -> None:
        """Passive health: an attempt at `endpoint` failed (`kind`: refused, timeout, 5xx, broken); a refused
        connection ejects at once, other kinds after `consecutive_failures` in a row."""
        reason = self.outliers.failure(endpoint.name, endpoint.pool, refused=kind == "refused")
        if reason is not None:
            log.warning("ejecting %s (%s, last: %s)", endpoint.name, reason, kind)
            self._set_healthy(endpoint, False)

    def abandon(self, endpoint: Endpoint) -> None:
        """An attempt at `endpoint` ended with no verdict (client gone, re-sent): a half-open trial is freed."""
        if self.outliers.abandon(endpoint.name):
            self._set_healthy(endpoint, True)

    def report_success(self, endpoint: Endpoint, first_byte_s: float | None, *, complete: bool = True) -> None:
        """An attempt at `endpoint` got its first byte (`first_byte_s`: how long it took, for streams), or a
        stream ended cleanly; a stream's first byte is not `complete` (it may still be cut: a failure)."""
        was_trial = self.outliers.trial_in_flight(endpoint.name)
        pool = self._snapshot.pools.get(endpoint.pool)
        members = tuple(e.name for e in pool.endpoints) if pool is not None else ()
        reason = self.outliers.success(endpoint.name, endpoint.pool, first_byte_s, members, complete=complete)
        if reason is not None:
            log.warning("ejecting %s (%s)", endpoint.name, reason)
            self._set_healthy(endpoint, False)
        elif was_trial:
            self._set_healthy(endpoint, True)

    def back_off(self, endpoint: Endpoint, seconds: float) -> None:
        """The instance asked (429/503 with Retry-After) for no requests for `seconds`."""
        self.outliers.back_off(endpoint.name, endpoint.pool, seconds)
        log.warning("%s backing off for %.1fs (Retry-After)", endpoint.name, seconds)
        self._set_healthy(endpoint, False)

    def _set_healthy(self, endpoint: Endpoint, healthy: bool) -> None:
        state = self._snapshot.state(endpoint)
        if state.healthy != healthy:
            self._publish(self._snapshot.pools, {**self._snapshot.states, endpoint.name: replace(state, healthy=healthy)})

    async def refresh(self, session: aiohttp.ClientSession) -> FleetSnapshot:
        """Probe and scrape every endpoint concurrently and publish the result."""
        endpoints = self.endpoints
        states = await asyncio.gather(*(self._probe(session, e) for e in endpoints))
        now = {e.name: e.url for e in self.endpoints}  # the layout may have changed while we probed
        self._probe_timeouts = {name: n for name, n in self._probe_timeouts.items() if name in now}
        probed = {e.name: s for e, s in zip(endpoints, states) if now.get(e.name) == e.url}
        self._publish(self._snapshot.pools, {**self._snapshot.states, **probed})
        return self._snapshot

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Refresh forever (cancel the task to stop); one failed round never stops the loop. KV-event
        subscriptions follow the fleet's layout each round and stop with the loop."""
        try:
            while True:
                self._kv.sync(self.endpoints)
                try:
                    await self.refresh(session)
                except Exception:  # noqa: BLE001 - a probe bug must not kill health checking
                    log.exception("fleet refresh failed")
                await asyncio.sleep(self._policy.probe_interval_s)
        finally:
            await self._kv.close()

    def kv_view(self, endpoint: Endpoint) -> InstanceKvBlocks | None:
        """The instance's exact cache contents (a router KvView) when it has `kv_events`, else None."""
        return self._kv.view(endpoint)

    def kv_live(self, pool_name: str) -> bool:
        """Whether some instance of `pool_name` has a live KV-event view (precise mode)."""
        pool = self._snapshot.pools.get(pool_name)
        return pool is not None and self._kv.live_block_tokens(pool.endpoints) is not None

    def kv_hashes(self, pool_name: str, request: InferenceRequest) -> tuple[int, ...]:
        """`request`'s KV block keys for `pool_name`'s engines, in the block size its live views
        report; () when none of its instances is live (then no router can use them)."""
        pool = self._snapshot.pools.get(pool_name)
        if pool is None:
            return ()
        block_tokens = self._kv.live_block_tokens(pool.endpoints)
        if block_tokens is None:
            return ()
        return kv_hashes(prompt_keys(pool.tokenizer), request, block_tokens)

    def kv_status(self) -> list[KvStatus]:
        """Every KV-event subscription's state (for metrics)."""
        return self._kv.status()

    def note_adapter(self, endpoint: Endpoint, adapter: str, held: bool) -> None:
        """The gateway loaded `adapter` on `endpoint` (held) or saw it refuse it as unknown (not held):
        published now, and kept over a probe that began before (it could not see the change)."""
        self._adapter_notes.setdefault(endpoint.name, {})[adapter] = (self._clock(), held)
        state = self._snapshot.state(endpoint)
        adapters = state.adapters | {adapter} if held else state.adapters - {adapter}
        self._publish(self._snapshot.pools, {**self._snapshot.states, endpoint.name: replace(state, adapters=adapters)})

    async def _probe(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> EndpointState:
        timeout = aiohttp.ClientTimeout(total=self._policy.probe_timeout_s)
        started_s = self._clock()
        healthy, metrics_text, listed = await asyncio.gather(
            self._get_ok(session, endpoint.url + "/health", timeout),
            self._get_text(session, endpoint.url + "/metrics", timeout),
            self._adapters_listed(session, endpoint, timeout),
        )
        now_s = self._clock()
        was_healthy = self._snapshot.state(endpoint).healthy
        if healthy is None:  # timed out: this replica's own stalled event loop looks the same, so only a run counts
            timeouts = self._probe_timeouts[endpoint.name] = self._probe_timeouts.get(endpoint.name, 0) + 1
            healthy = was_healthy and timeouts < self._policy.probe_timeouts_to_fail
        else:
            self._probe_timeouts.pop(endpoint.name, None)
        if healthy and (self.outliers.out(endpoint.name) or self.outliers.trial_in_flight(endpoint.name)):
            healthy = False  # still ejected or backing off, or its half-open trial is not answered yet
        if healthy != was_healthy:
            log.warning("%s is %s", endpoint.name, "healthy again" if healthy else "unhealthy")
        load = parse_vllm_metrics(metrics_text) if metrics_text else None
        adapters = self._with_notes(endpoint, listed | (load.lora_adapters if load else frozenset()), started_s)
        if load is None:
            return EndpointState(healthy=healthy, scraped_at_s=now_s, adapters=adapters)
        return EndpointState(
            healthy=healthy,
            waiting=load.waiting,
            running=load.running,
            kv_usage_ratio=load.kv_usage_ratio,
            prefix_queries_tokens=load.prefix_queries_tokens,
            prefix_hits_tokens=load.prefix_hits_tokens,
            kv_cache_tokens=load.kv_cache_tokens,
            scraped_at_s=now_s,
            adapters=adapters,
        )

    def _with_notes(self, endpoint: Endpoint, adapters: frozenset[str], probe_started_s: float) -> frozenset[str]:
        """What the probe saw, corrected by the gateway's own loads and refusals it could not have seen."""
        notes = self._adapter_notes.get(endpoint.name)
        if not notes:
            return adapters
        for adapter, (noted_s, held) in list(notes.items()):
            if noted_s < probe_started_s:
                del notes[adapter]  # the probe saw the instance after this: it knows better
            else:
                adapters = adapters | {adapter} if held else adapters - {adapter}
        return adapters

    async def _adapters_listed(self, session: aiohttp.ClientSession, endpoint: Endpoint,
                               timeout: aiohttp.ClientTimeout) -> frozenset[str]:
        """The LoRA adapters `/v1/models` lists (entries with a `parent`), for pools that use adapters."""
        pool = self._snapshot.pools.get(endpoint.pool)
        if pool is None or not (pool.lora_adapters or pool.runtime_lora_loading):
            return frozenset()
        credential = pool.upstream_authorization(os.environ)
        try:
            async with session.get(endpoint.url + "/v1/models", timeout=timeout,
                                   headers={"Authorization": credential} if credential else None) as response:
                cards = (await response.json()).get("data", []) if response.status == 200 else []
            return frozenset(c["id"] for c in cards if isinstance(c, dict) and c.get("parent") and isinstance(c.get("id"), str))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, AttributeError):
            return frozenset()

    @staticmethod
    async def _get_ok(session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout) -> bool | None:
        """Whether `url` answered 200; None when it did not answer in time."""
        try:
            async with session.get(url, timeout=timeout) as response:
                return response.status == 200
        except asyncio.TimeoutError:
            return None
        except (aiohttp.ClientError, OSError):
            return False

    @staticmethod
    async def _get_text(session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout) -> str | None:
        try:
            async with session.get(url, timeout=timeout) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None

    def _publish(self, pools: Mapping[str, Pool], states: Mapping[str, EndpointState]) -> None:
        self._snapshot = FleetSnapshot(
            version=self._snapshot.version + 1, pools=pools, states=MappingProxyType(dict(states))
        )
