"""Two Ray nodes on this machine (`ray start --head`, `ray start --address`), the gateway deployed with
deploy/serve-multinode.yaml (one replica per node, placed by the `fleetgate_gateway` resource), requests
through Serve's proxy with the official openai client; then the worker node is killed mid-run.

Runs the commands docs/scale-out.md shows. Its own Ray: free ports and its own temp dir, each node
started with `--block` in its own process group, so the test stops exactly its two nodes (never
`ray stop`, which stops every Ray on the machine, other sessions' too). Ray's Python proxy, not
HAProxy mode: Ray 2.60's HAProxy binds its stats and metrics ports on every interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import openai
import pytest
import yaml
from support.gateway import MODEL, emulators
from support.servers import free_port, in_thread

from fleetgate.app.replica_header import REPLICA_HEADER
from fleetgate.loadgen.proctree import process_tree

pytestmark = pytest.mark.e2e

DEPLOY_YAML = Path(__file__).resolve().parents[2] / "deploy" / "serve-multinode.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
REQUESTS = 48  # bounded: every request is counted in exactly one outcome
CONCURRENCY = 6
START_TIMEOUT_S = 240.0


def _ray_env(temp_dir: str) -> dict[str, str]:
    """Token authentication with this cluster's own token (not ~/.ray/auth_token, which other local
    clusters share); workers at the default priority (docs/scale-out.md); Ray's Python proxy; and the head's one proxy spreads requests over every node's
    replica (a proxy prefers its own node's replicas by default: right when each node has a proxy)."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_TMPDIR": temp_dir}


def _node_flags(resource: dict[str, float]) -> list[str]:
    ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    flags = [arg for option in ports for arg in (option, str(free_port()))]
    return [*flags, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(80 * 2**20),
            "--resources", json.dumps(resource), "--block", "--disable-usage-stats"]


@contextlib.contextmanager
def _node(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `ray start --block` in its own process group: killing the group is losing the node."""
    with open(log, "wb") as handle:
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        yield process
    finally:
        _kill_group(process, signal.SIGTERM, wait_s=30)
        _kill_group(process, signal.SIGKILL, wait_s=10)


def _kill_group(process: subprocess.Popen[bytes], signum: int, wait_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=wait_s)


def _kill_node(node: subprocess.Popen[bytes]) -> None:
    """Lose the node at once: SIGKILL to its `ray start` and every process below it (raylet, the
    gateway replica and the other workers), which all run below the process this test started."""
    for process in process_tree(node.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    node.wait(timeout=10)


def _wait_for_cluster_count(address: str, env: dict[str, str], count: int, what: str, script: str,
                            node: tuple[subprocess.Popen[bytes], Path] | None = None) -> None:
    """Until `script` (run against the cluster at `address`) prints `count`; fails at once when `node`,
    the node just started, has exited (its log in the message)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if node is not None:
            assert node[0].poll() is None, f"the node exited: {node[1].read_text()[-2000:]}"
        done = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"{what} did not reach {count}")


def _wait_for_running_replicas(address: str, env: dict[str, str], count: int) -> None:
    """Until Serve's controller counts `count` running gateway replicas (it has seen a lost one go)."""
    _wait_for_cluster_count(address, env, count, "Serve's running replicas", (
        "import ray,sys; from ray import serve; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(serve.status().applications['fleetgate'].deployments['fleetgate'].replica_states.get('RUNNING'))"))


def _wait_for_nodes(address: str, env: dict[str, str], count: int, node: subprocess.Popen[bytes],
                    log: Path) -> None:
    """Until `count` nodes are alive; fails at once when the node just started has exited."""
    _wait_for_cluster_count(address, env, count, "the cluster's live nodes", (
        "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"), (node, log))


def _serve_config(urls: list[str], port: int) -> dict:
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    del args["fleet"]
    args.update(worker_urls=urls, model=MODEL, probe_interval_s=0.2)
    return config


class Outcomes:
    """Each request ends in one of: completed, cut mid-stream (after its first chunk), lost before
    its first chunk (after the openai client's own retries). Plus which replica (node/replica id)
    answered, and the 5xx answers the client retried (a replica lost after it accepted a request
    and before its first byte: Serve re-routes only requests no replica has accepted yet)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.replicas: Counter[str] = Counter()
        self.errors: list[str] = []
        self.retried_5xx = 0

    def client(self, url: str) -> openai.AsyncOpenAI:
        """The openai client as users run it: its default retries (on 5xx and connection errors,
        which only a request without an answer yet can get)."""

        async def count_5xx(response: Any) -> None:  # the HTTP client's response, whichever httpx openai uses
            self.retried_5xx += response.status_code >= 500

        return openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", timeout=60,
                                  http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [count_5xx]}))

    async def send(self, client: openai.AsyncOpenAI, index: int) -> None:
        started = False
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"request {index}: tell me a story"}],
                max_tokens=24, stream=True)
            replica = raw.headers.get(REPLICA_HEADER, "missing")
            async for _chunk in raw.parse():
                started = True
            self.replicas[replica] += 1
            self.counts["completed"] += 1
        except (openai.APIError, OSError) as error:
            self.counts["cut mid-stream" if started else "lost before streaming"] += 1
            self.errors.append(f"{index}: {type(error).__name__}: {error}"[:300])


async def _run_load(url: str, outcomes: Outcomes, on_progress: Callable[[int], Awaitable[None]]) -> None:
    client = outcomes.client(url)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(REQUESTS):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            await outcomes.send(client, index)
            await on_progress(index)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def test_two_nodes_serve_from_both_and_survive_losing_the_worker(tmp_path: Path) -> None:
    temp_dir = tempfile.mkdtemp(prefix="fg-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    env = _ray_env(temp_dir)
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    head = [RAY, "start", "--head", "--port", str(gcs_port), "--temp-dir", temp_dir, "--include-dashboard", "false",
            "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            *_node_flags({"fleetgate_gateway": 1})]
    worker = [RAY, "start", "--address", address, *_node_flags({"fleetgate_gateway": 1})]
    config_file = tmp_path / "serve.yaml"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        with in_thread(lambda: emulators(2, time_scale=0.5)) as (servers, _loop), contextlib.ExitStack() as stack:
            head_node = stack.enter_context(_node(head, env, tmp_path / "head.log"))
            _wait_for_nodes(address, env, 1, head_node, tmp_path / "head.log")
            worker_node = stack.enter_context(_node(worker, env, tmp_path / "worker.log"))
            _wait_for_nodes(address, env, 2, worker_node, tmp_path / "worker.log")
            config_file.write_text(yaml.safe_dump(_serve_config([s.url for s in servers], port)))
            subprocess.run([SERVE, "run", "--address", address, "--non-blocking", str(config_file)], env=env,
                           check=True, timeout=START_TIMEOUT_S, capture_output=True)
            asyncio.run(_wait_until_both_replicas_answer(url))

            before = Outcomes()
            asyncio.run(_run_load(url, before, _no_progress))
            assert before.counts == {"completed": REQUESTS} and before.retried_5xx == 0, before.errors
            assert len(before.replicas) == 2, before.replicas  # both nodes' replicas served
            assert len({name.split("/")[0] for name in before.replicas}) == 2, before.replicas

            during = Outcomes()
            killed = asyncio.Event()

            async def kill_after_a_third(index: int) -> None:
                if sum(during.counts.values()) >= REQUESTS // 3 and not killed.is_set():
                    killed.set()
                    _kill_node(worker_node)

            asyncio.run(_run_load(url, during, kill_after_a_third))
            print(f"\nworker node killed after {REQUESTS // 3} of {REQUESTS} requests: {dict(during.counts)}, "
                  f"{during.retried_5xx} 5xx answers retried by the client; served by {dict(during.replicas)}; "
                  f"errors: {during.errors}")
            assert killed.is_set()
            assert during.counts["lost before streaming"] == 0, during.errors
            assert sum(during.counts.values()) == REQUESTS

            _wait_for_running_replicas(address, env, 1)  # the lost replica's replacement has no node to go to
            after = Outcomes()
            asyncio.run(_run_load(url, after, _no_progress))
            assert after.counts == {"completed": REQUESTS} and after.retried_5xx == 0, after.errors
            survivors = {name.split("/")[0] for name in after.replicas}
            assert len(survivors) == 1 and survivors < {name.split("/")[0] for name in before.replicas}
    finally:  # Serve's logs stay with the test's tmp_path, the cluster's temp dir goes
        serve_logs = Path(temp_dir) / "session_latest" / "logs" / "serve"
        if serve_logs.is_dir():
            shutil.copytree(serve_logs, tmp_path / "serve-logs", dirs_exist_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


async def _no_progress(_index: int) -> None:
    return None


async def _wait_until_both_replicas_answer(url: str) -> None:
    """Bounded: the deployment is up when /v1/models answers from two different replicas."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=10)
    seen: set[str] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"replicas answering: {seen}"
        with contextlib.suppress(openai.APIError):
            raw = await client.models.with_raw_response.list()
            seen.add(raw.headers.get(REPLICA_HEADER, ""))
            seen.discard("")
        await asyncio.sleep(0.5)
