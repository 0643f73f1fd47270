"""Where a test finds a peer router (sglang-router, vllm-router) that .ci/run installs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetgate.loadgen.peers import PEERS, PeerMissing, find_peer

ROOT = Path(__file__).resolve().parents[2]


def peer_venv(name: str) -> str:
    """The peer's venv ($FLEETGATE_..._VENV, else .peers/NAME), or a failure that says how to install
    it: a missing peer fails, never skips, so a run without it cannot pass unnoticed."""
    peer = PEERS[name]
    venv = os.environ.get(peer.venv_env) or str(ROOT / ".peers" / name)
    try:
        find_peer(peer, venv)
    except PeerMissing as missing:
        pytest.fail(f"{missing} (.ci/run does this)")
    return venv
