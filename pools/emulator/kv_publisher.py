"""The emulator's KV-cache events, in vLLM's wire format (pools/kv_events.py describes it).

The engine tells this listener of every block it caches or evicts; events of one engine step go
out as one batch [topic, seq, msgpack KVEventBatch], as vLLM's scheduler publishes one batch per
step. Two things vLLM does not do, so a gateway can trust the emulator's stream without a replay:
an empty batch every `heartbeat_s` (silence then means a dead publisher), and, to each new
subscriber (an XPUB subscription message), a batch [AllBlocksCleared, every cached block], which
for subscribers already in sync changes nothing.

Block hashes are the engine's own (pools/kv_keys.py character keys), token ids are the 4-character
ids of the same module, so a subscriber's recomputed key equals the engine's hash.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import msgpack
import zmq

from fleetgate.core.tokens import KV_BLOCK_TOKENS

HEARTBEAT_S = 1.0
_BLOCK_BYTES = KV_BLOCK_TOKENS * 4
_UNPACK_BLOCK = struct.Struct(f"<{KV_BLOCK_TOKENS}I").unpack


class KvEventPublisher:
    """An engine `KvListener` that publishes on a ZMQ XPUB socket bound to host:port."""

    def __init__(self, host: str, port: int, *, heartbeat_s: float = HEARTBEAT_S, topic: bytes = b"") -> None:
        self.url = f"tcp://{host}:{port}"
        self._heartbeat_s = heartbeat_s
        self._topic = topic
        self._socket = zmq.Context.instance().socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's join, not just the topic's first
        self._socket.bind(self.url)
        self._seq = 0
        self._last_sent_s = 0.0
        self._tokens: dict[str, bytes] = {}  # request id -> packed prompt token ids (kv_keys.char_token_bytes)
        self._cached: dict[int, tuple[int | None, bytes]] = {}  # block hash -> (parent hash, packed token ids)
        self._events: list[dict[str, Any]] = []

    # -- the engine's KvListener ----------------------------------------------------------------

    def stored(self, request_id: str, index: int, block_hash: int, parent_hash: int | None) -> None:
        tokens = self._tokens[request_id][index * _BLOCK_BYTES : (index + 1) * _BLOCK_BYTES]
        self._cached[block_hash] = (parent_hash, tokens)
        self._add_stored(self._events, block_hash, parent_hash, tokens)

    def removed(self, block_hash: int) -> None:
        self._cached.pop(block_hash, None)
        last = self._events[-1] if self._events else None
        if last is not None and last["type"] == "BlockRemoved":
            last["block_hashes"].append(block_hash)
        else:
            self._events.append({"type": "BlockRemoved", "block_hashes": [block_hash], "medium": "GPU"})

    # -- requests and batches -------------------------------------------------------------------

    def track(self, request_id: str, token_bytes: bytes) -> None:
        """Remember a request's prompt token ids while the engine may cache its blocks."""
        self._tokens[request_id] = token_bytes

    def untrack(self, request_id: str) -> None:
        self._tokens.pop(request_id, None)

    def flush(self) -> None:
        """Publish what the last engine step stored and evicted, as one batch."""
        if self._events:
            events, self._events = self._events, []
            self._send(events)

    async def run(self) -> None:
        """Heartbeats and snapshots for new subscribers, until cancelled."""
        tick_s = self._heartbeat_s / 4
        while True:
            if self._joined():
                self.flush()
                snapshot: list[dict[str, Any]] = [{"type": "AllBlocksCleared"}]
                for block_hash, (parent, tokens) in self._cached.items():
                    self._add_stored(snapshot, block_hash, parent, tokens)
                self._send(snapshot)
            elif time.monotonic() - self._last_sent_s >= self._heartbeat_s:
                self._send([])
            await asyncio.sleep(tick_s)

    def close(self) -> None:
        self._socket.close(linger=0)

    def _joined(self) -> bool:
        """Whether a subscriber joined since the last call (drains the subscription messages)."""
        joined = False
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return joined
            joined = joined or message[:1] == b"\x01"

    def _send(self, events: list[dict[str, Any]]) -> None:
        payload = msgpack.packb([time.time(), events, 0])
        self._socket.send_multipart((self._topic, self._seq.to_bytes(8, "big"), payload))
        self._seq += 1
        self._last_sent_s = time.monotonic()

    @staticmethod
    def _add_stored(events: list[dict[str, Any]], block_hash: int, parent: int | None, tokens: bytes) -> None:
        """Append a BlockStored, extending the last one when this block continues its chain."""
        last = events[-1] if events else None
        if last is not None and last["type"] == "BlockStored" and last["block_hashes"][-1] == parent:
            last["block_hashes"].append(block_hash)
            last["token_ids"].extend(_UNPACK_BLOCK(tokens))
            return
        events.append({
            "type": "BlockStored", "block_hashes": [block_hash], "parent_block_hash": parent,
            "token_ids": list(_UNPACK_BLOCK(tokens)), "block_size": KV_BLOCK_TOKENS, "lora_id": None,
            "medium": "GPU", "lora_name": None,
        })
