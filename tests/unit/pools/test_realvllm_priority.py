"""The real-vLLM launcher lowers the priority of an instance's engine processes, not its API server."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from fleetgate.pools.realvllm import VllmFleet, VllmInstance, lower_engine_priority


def test_every_thread_but_the_group_leaders_is_reniced(tmp_path: Path) -> None:
    # A stand-in instance: a group leader (the "API server") with two children (engine core, worker).
    leader = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while len(children := _children(leader.pid)) < 2:
            assert time.monotonic() < deadline, "the stand-in's children did not start"
            time.sleep(0.02)
        lower_engine_priority(VllmFleet([VllmInstance("http://127.0.0.1:1", leader, tmp_path / "log")]), 7)
        assert os.getpriority(os.PRIO_PROCESS, leader.pid) == 0
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in children] == [7, 7]
    finally:
        os.killpg(leader.pid, 9)
        leader.wait()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
