"""Hot reload: a valid file swaps in on the next poll; an invalid one is rejected and the old one serves."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fleetgate.core.clock import ManualClock
from fleetgate.core.request import InferenceRequest
from fleetgate.core.yamlconf import ConfigError
from fleetgate.policies.reload import PolicySource, PolicyWatcher, build_planner

POLICY = """\
version: 1
pools:
  - {name: a, model: llama, gpu: h100, count: 1, base_port: 9101}
  - {name: b, model: llama, gpu: h100, count: 1, base_port: 9201}
rules:
  - {name: chat, match: {api: chat}, pools: [a, b]}
"""
SWAPPED = POLICY.replace("pools: [a, b]", "pools: [b, a]").replace("name: chat,", "name: chat-swapped,")
INVALID = POLICY.replace("pools: [a, b]", "pools: [a, nope]")

REQUEST = InferenceRequest(
    request_id="r", api="chat", model="llama", body={}, stream=True, messages=({"role": "user", "content": "hi"},)
)


def write(path: Path, text: str, mtime_s: int) -> None:
    """Write and set an explicit mtime so the change is visible whatever the file system's granularity."""
    path.write_text(text)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))


@pytest.fixture
def setup(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    write(path, POLICY, 1000)
    source = PolicySource(path)
    planner = build_planner(source)
    clock = ManualClock()
    return path, planner, PolicyWatcher(planner, source, clock=clock, interval_s=2.0), clock


async def test_a_valid_change_swaps_in_after_the_interval(setup):
    path, planner, watcher, clock = setup
    assert (await planner.plan(REQUEST)).pools == ("a", "b")
    write(path, SWAPPED, 1001)
    assert watcher.poll() is None  # interval not yet passed
    clock.advance(2.0)
    assert watcher.poll() == []
    plan = await planner.plan(REQUEST)
    assert (plan.rule, plan.pools) == ("chat-swapped", ("b", "a"))
    assert (watcher.reloads, watcher.rejected) == (1, 0)


async def test_an_unchanged_file_is_not_reloaded(setup):
    _, planner, watcher, clock = setup
    compiled = planner.compiled
    clock.advance(10.0)
    assert watcher.poll() is None
    assert planner.compiled is compiled and watcher.reloads == 0


async def test_an_invalid_change_is_rejected_logged_and_the_old_policy_keeps_serving(setup, caplog):
    path, planner, watcher, clock = setup
    compiled = planner.compiled
    write(path, INVALID, 1001)
    clock.advance(2.0)
    with caplog.at_level(logging.ERROR, logger="fleetgate.policies"):
        problems = watcher.poll()
    assert problems and problems[0].path == "rules[0].pools[1]" and "unknown pool 'nope'" in problems[0].message
    assert "rules[0].pools[1]" in caplog.text
    assert planner.compiled is compiled
    assert (await planner.plan(REQUEST)).pools == ("a", "b")
    assert (watcher.reloads, watcher.rejected) == (0, 1)
    # the same broken file is not retried on every poll; fixing it swaps in
    clock.advance(2.0)
    assert watcher.poll() is None
    write(path, SWAPPED, 1002)
    clock.advance(2.0)
    assert watcher.poll() == [] and (await planner.plan(REQUEST)).pools == ("b", "a")


async def test_reload_now_is_the_admin_reload(setup):
    path, planner, watcher, _ = setup
    path.write_text(SWAPPED)
    assert watcher.reload_now() == []
    assert (await planner.plan(REQUEST)).rule == "chat-swapped"
    path.write_text("version: 1\nrules: [\n")
    problems = watcher.reload_now()
    assert problems and "not valid YAML" in problems[0].message
    assert (await planner.plan(REQUEST)).rule == "chat-swapped"


async def test_a_deleted_file_keeps_the_policy(setup):
    path, planner, watcher, clock = setup
    compiled = planner.compiled
    path.unlink()
    clock.advance(2.0)
    assert watcher.poll() is None and planner.compiled is compiled


async def test_a_failing_compile_keeps_the_old_policy(tmp_path: Path):
    class BrokenEmbedder:
        dim = 4

        def embed(self, texts):
            raise RuntimeError("model unavailable")

    path = tmp_path / "p.yaml"
    write(path, POLICY, 1000)
    planner = build_planner(PolicySource(path))
    watcher = PolicyWatcher(planner, PolicySource(path, embedder=BrokenEmbedder()), clock=ManualClock(), interval_s=2.0)
    path.write_text(POLICY + "categories:\n  - {name: c, exemplars: [hello]}\n")
    problems = watcher.reload_now()
    assert problems and "model unavailable" in problems[0].message
    assert (await planner.plan(REQUEST)).rule == "chat"


def test_build_planner_rejects_an_invalid_file_with_paths(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(INVALID)
    with pytest.raises(ConfigError) as caught:
        build_planner(PolicySource(path))
    assert caught.value.problems[0][0] == "rules[0].pools[1]"
