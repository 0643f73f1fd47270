"""vLLM KV-cache events in, each instance's exact prefix-cache contents out (precise mode).

vLLM started with `--kv-events-config` publishes on a ZMQ PUB socket; each message is three frames
[topic, sequence (8 bytes, big-endian), msgpack payload]. The payload is an array-like
`KVEventBatch` [ts, events, data_parallel_rank]; each event is a tagged msgspec struct, a map with
"type" (vLLM 0.32) or, in older releases, an array whose first element is the tag:
BlockStored (block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
extra_keys, group_idx, ...), BlockRemoved (block_hashes, medium, group_idx, ...) and
AllBlocksCleared. Block hashes are bytes, or ints with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES.

`InstanceKvBlocks` keys each stored block by pools/kv_keys.py's chain over its token ids (the
parent's key found through a vLLM-hash -> key map), so routers compare keys they compute from the
prompt. Blocks with extra keys (LoRA, multimodal, cache_salt), of other media (CPU offload) or of
other KV-cache groups are not kept: a prompt's token ids alone cannot name them.

When is the set trusted (`live`)? vLLM publishes only when its cache changes and keeps no state a
newcomer can ask for: its optional replay socket (`replay_endpoint`, a ROUTER answering "batches
from sequence N" out of the last `buffer_steps` batches) can fill a short gap but cannot rebuild
the set of a publisher that started before we subscribed. So the rule is:
- the set is exact from a batch with sequence 0 (a publisher that just started; a jump back to 0
  is a restart and clears the set) or from an AllBlocksCleared event on;
- a first batch with a later sequence (joined mid-stream) or a gap in the sequence clears the set
  and leaves it not live until one of those resyncs (vLLM emits AllBlocksCleared on
  /reset_prefix_cache; the emulator sends [AllBlocksCleared, its whole cache] to each new
  subscriber). The replay socket is not used: a filled gap would still leave a newcomer out;
- it is live only while the ZMQ connection is up (socket monitor; ZMTP heartbeats notice a dead
  peer), and after a reconnect only once a batch has shown the sequence unbroken;
- a publisher that sends empty batches (the emulator's heartbeat; vLLM never does) is held to
  them: no batch for `stale_after_s` and it is not live until the next one.
Not live means routers use their own approximate view; metrics say which instances are live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

import msgpack

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.tokens import KV_BLOCK_TOKENS
from fleetgate.pools.kv_keys import chain_keys, pack_token_ids
from fleetgate.pools.model import Endpoint

log = logging.getLogger("fleetgate.pools.kv_events")

STALE_AFTER_S = 3.0  # three of the emulator's 1 s heartbeats
_PRIMARY_MEDIA = (None, "GPU")  # the prefix cache itself; "CPU"/"STORAGE" are offload tiers


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[Hashable, ...]
    parent_block_hash: Hashable | None
    token_ids: tuple[int, ...]  # len(block_hashes) * block_size
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: tuple[Any, ...] | None = None  # one entry (or None) per block
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[Hashable, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class KvEventBatch:
    ts: float
    events: tuple[KvEvent, ...]
    data_parallel_rank: int | None = None


class KvEventDecodeError(ValueError):
    """A payload that is not a vLLM KVEventBatch."""


_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                    "lora_name", "extra_keys", "group_idx"),
    "BlockRemoved": ("block_hashes", "medium", "group_idx"),
    "AllBlocksCleared": (),
}
_TYPES: dict[str, type] = {"BlockStored": BlockStored, "BlockRemoved": BlockRemoved, "AllBlocksCleared": AllBlocksCleared}


def decode_batch(payload: bytes) -> KvEventBatch:
    """One msgpack payload -> a batch; fields this module does not use are dropped."""
    try:
        raw = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)
        if not isinstance(raw, (tuple, list)) or len(raw) < 2:
            raise KvEventDecodeError("a KVEventBatch is an array [ts, events, data_parallel_rank]")
        events = tuple(_decode_event(e) for e in raw[1])
        return KvEventBatch(float(raw[0]), events, raw[2] if len(raw) > 2 else None)
    except (msgpack.UnpackException, ValueError, TypeError, KeyError, IndexError) as exc:
        if isinstance(exc, KvEventDecodeError):
            raise
        raise KvEventDecodeError(str(exc)) from exc


def _decode_event(raw: Any) -> KvEvent:
    if isinstance(raw, dict):
        tag, values = raw["type"], raw
    else:
        tag, values = raw[0], dict(zip(_FIELDS.get(raw[0], ()), raw[1:]))
    names = _FIELDS.get(tag)
    if names is None:
        raise KvEventDecodeError(f"unknown KV event type {tag!r}")
    return _TYPES[tag](**{name: values[name] for name in names if name in values})


class InstanceKvBlocks:
    """One instance's prefix cache as its events describe it; a `KvView` for the routers
    (router/routing/base.py). Fed by `subscribe` (or directly by tests) in one event loop."""

    def __init__(self, name: str, *, clock: Clock = monotonic_clock, stale_after_s: float = STALE_AFTER_S) -> None:
        self.name = name
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._keys: dict[Hashable, int] = {}  # vLLM block hash -> our key
        self._held: dict[int, int] = {}  # our key -> vLLM blocks carrying it
        self._block_tokens = KV_BLOCK_TOKENS
        self._next_seq: int | None = None
        self._synced = False
        self._connected = False
        self._confirmed = False  # a batch arrived since the last (re)connect
        self._heartbeats = False  # the publisher sends empty batches, so silence means trouble
        self._last_batch_s = 0.0
        self.batches = 0
        self.events = 0
        self.gaps = 0  # sequence gaps, a mid-stream join included
        self.bad_batches = 0

    # -- KvView -----------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        if not (self._connected and self._confirmed and self._synced):
            return False
        return not self._heartbeats or self._clock() - self._last_batch_s <= self._stale_after_s

    @property
    def block_tokens(self) -> int:
        return self._block_tokens

    def matched_blocks(self, kv_hashes: Sequence[int]) -> int:
        held = self._held
        if not kv_hashes or kv_hashes[0] not in held:
            return 0  # the usual miss costs one lookup
        for matched, key in enumerate(kv_hashes):
            if key not in held:
                return matched
        return len(kv_hashes)

    def __len__(self) -> int:
        return len(self._keys)

    # -- feeding ----------------------------------------------------------------------------------

    def connected(self, up: bool) -> None:
        """The subscription's connection went up or down."""
        self._connected = up
        self._confirmed = False

    def missed(self) -> None:
        """A batch was lost (undecodable): the set can no longer be trusted."""
        self._resync_needed()

    def apply(self, seq: int, batch: KvEventBatch) -> None:
        """Apply one batch received with sequence number `seq`."""
        self.batches += 1
        self._last_batch_s = self._clock()
        self._confirmed = True
        if not batch.events:
            self._heartbeats = True
        expected, self._next_seq = self._next_seq, seq + 1
        if seq == 0:
            self._clear()  # a fresh (or restarted) publisher: nothing was cached before this batch
            self._synced = True
        elif seq != expected:
            self._resync_needed()
        for event in batch.events:
            self.events += 1
            if isinstance(event, BlockStored):
                self._stored(event)
            elif isinstance(event, BlockRemoved):
                self._removed(event)
            else:
                self._clear()
                self._synced = True

    def _resync_needed(self) -> None:
        self.gaps += 1
        self._clear()
        self._synced = False

    def _clear(self) -> None:
        self._keys.clear()
        self._held.clear()

    def _stored(self, event: BlockStored) -> None:
        if event.medium not in _PRIMARY_MEDIA or event.group_idx not in (None, 0):
            return
        parent: int | None = None
        if event.parent_block_hash is not None:
            parent = self._keys.get(event.parent_block_hash)
            if parent is None:
                return  # its parent is unknown (evicted or never seen): no key can be computed
        size = event.block_size
        self._block_tokens = size
        count = len(event.block_hashes)
        if event.extra_keys:
            count = next((i for i, extra in enumerate(event.extra_keys) if extra is not None), count)
        if count == 0 or len(event.token_ids) < count * size:
            return
        keys = chain_keys(pack_token_ids(event.token_ids[: count * size]), size, parent)
        held = self._held
        for block_hash, key in zip(event.block_hashes, keys):
            old = self._keys.get(block_hash)
            if old == key:
                continue
            if old is not None:
                self._release(old)
            self._keys[block_hash] = key
            held[key] = held.get(key, 0) + 1

    def _removed(self, event: BlockRemoved) -> None:
        if event.medium not in _PRIMARY_MEDIA or event.group_idx not in (None, 0):
            return
        for block_hash in event.block_hashes:
            key = self._keys.pop(block_hash, None)
            if key is not None:
                self._release(key)

    def _release(self, key: int) -> None:
        count = self._held[key] - 1
        if count:
            self._held[key] = count
        else:
            del self._held[key]


async def subscribe(blocks: InstanceKvBlocks, url: str, topic: bytes = b"") -> None:
    """Receive `url`'s events into `blocks` until cancelled (reconnects on its own)."""
    import zmq
    import zmq.asyncio
    from zmq.utils.monitor import parse_monitor_message

    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    poller = zmq.asyncio.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    sock.connect(url)
    try:
        while True:
            ready = dict(await poller.poll())
            if monitor in ready:
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
                blocks.connected(event == zmq.EVENT_HANDSHAKE_SUCCEEDED)
            if sock in ready:
                _receive(blocks, await sock.recv_multipart())
    finally:
        blocks.connected(False)
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def _receive(blocks: InstanceKvBlocks, frames: list[bytes]) -> None:
    try:
        if len(frames) != 3 or len(frames[1]) != 8:
            raise KvEventDecodeError(f"expected [topic, seq, payload], got {len(frames)} frames")
        batch = decode_batch(frames[2])
    except KvEventDecodeError as exc:
        blocks.bad_batches += 1
        if blocks.bad_batches == 1:
            log.warning("undecodable KV event batch from %s (%s); its cache view resyncs", blocks.name, exc)
        blocks.missed()
        return
    blocks.apply(int.from_bytes(frames[1], "big"), batch)


@dataclass(frozen=True, slots=True)
class KvStatus:
    """One subscription's state, for metrics."""

    pool: str
    instance: str
    live: bool
    batches: int
    events: int
    gaps: int
    blocks: int


class KvSubscriptions:
    """One `InstanceKvBlocks` and subscriber task per endpoint with `kv_events`, following the
    fleet's layout (`sync`)."""

    def __init__(self, *, clock: Clock = monotonic_clock) -> None:
        self._clock = clock
        self._views: dict[str, tuple[Endpoint, InstanceKvBlocks]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def view(self, endpoint: Endpoint) -> InstanceKvBlocks | None:
        entry = self._views.get(endpoint.name)
        return entry[1] if entry is not None and entry[0].kv_events == endpoint.kv_events else None

    def sync(self, endpoints: Iterable[Endpoint]) -> None:
        """Subscribe to every endpoint's events that are not subscribed yet; stop the rest."""
        wanted = {e.name: e for e in endpoints if e.kv_events}
        for name, (endpoint, _) in list(self._views.items()):
            if wanted.get(name) is None or wanted[name].kv_events != endpoint.kv_events:
                self._stop(name)
        for name, endpoint in wanted.items():
            if name not in self._views:
                blocks = InstanceKvBlocks(name, clock=self._clock)
                self._views[name] = (endpoint, blocks)
                assert endpoint.kv_events is not None
                self._tasks[name] = asyncio.get_running_loop().create_task(
                    subscribe(blocks, endpoint.kv_events), name=f"kv-events-{name}")

    def status(self) -> list[KvStatus]:
        return [KvStatus(e.pool, name, b.live, b.batches, b.events, b.gaps, len(b))
                for name, (e, b) in self._views.items()]

    def live_block_tokens(self, endpoints: Iterable[Endpoint]) -> int | None:
        """Block size of the first of `endpoints` whose view is live (None: no live view)."""
        for endpoint in endpoints:
            view = self.view(endpoint)
            if view is not None and view.live:
                return view.block_tokens
        return None

    def _stop(self, name: str) -> None:
        self._views.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for name in list(self._views):
            self._stop(name)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
