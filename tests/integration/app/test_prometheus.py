"""A real Prometheus server on loopback scrapes the gateway and two emulated vLLM instances under a short,
bounded load, with the shipped alert rules (their `for:` cut to 0s) evaluated every second.

Then, judged by events: killing an instance makes `FleetgateInstanceEjected` fire for it; every query of
the Grafana dashboard (app/dashboard.py) and the value of every alert expression returns data, so a renamed
metric fails here; and `fleetgate observe panels` draws every panel from that Prometheus. Set
FLEETGATE_PANELS_PNG=docs/observability-panels.png to write the picture docs/observability.md shows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import openai
import pytest
import yaml
from support.gateway import MODEL, emulators, gateway
from support.servers import free_port

from fleetgate.app.cli import main
from fleetgate.app.dashboard import PANELS, query_for
from fleetgate.router.ingress import tenant_of

pytestmark = pytest.mark.integration

RULES = sorted((Path(__file__).resolve().parents[3] / "deploy" / "prometheus").glob("*.yml"))
WINDOW = "5m"  # longer than the test: every rate sees the whole run
DOOMED_KEY = "key-doomed"  # its rule's 1 ms TTFT SLO cannot be met: admission sheds it
PICTURE = os.environ.get("FLEETGATE_PANELS_PNG")
# The picture for the docs wants a couple of minutes of traffic; the check needs a few requests.
LOAD = ({"workers": 4, "requests": 600, "pause_s": 0.5, "distinct": 200, "max_tokens": 64} if PICTURE
        else {"workers": 1, "requests": 18, "pause_s": 0.0, "distinct": 8, "max_tokens": 8})
ALERT_FORM = re.compile(r"^(?P<value>.+?)\s*(?:==|!=|<=|>=|<|>)\s*[0-9.]+$", re.S)


def _policy(path: Path) -> str:
    path.write_text(f"""version: 1
topic: {{default_category: general}}
categories:
  - name: general
    cache: {{enabled: true, threshold: 0.95, ttl_s: 3600}}
rules:
  - name: doomed
    match: {{tenant: [{tenant_of({"authorization": f"Bearer {DOOMED_KEY}"})}]}}
    ttft_slo_ms: 1
    priority: -1
    router: dualmap
defaults:
  router: round-robin
  ttft_slo_ms: 5000
""")
    return str(path)


def alert_values() -> dict[str, str]:
    """Each shipped alert's VALUE (its expression is `VALUE OPERATOR THRESHOLD`)."""
    values = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    match = ALERT_FORM.match(rule["expr"].strip())
                    assert match, f"{rule['alert']}: write its expression as VALUE OPERATOR THRESHOLD"
                    values[rule["alert"]] = match["value"]
    return values


@contextlib.contextmanager
def prometheus(tmp_path: Path, gateway_target: str, vllm_targets: list[str]) -> Iterator[str]:
    """A Prometheus server on a free loopback port, scraping the gateway and the instances every second as
    docs/observability.md says, with the shipped rules (every `for:` made 0s) evaluated every second."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is not on PATH (Debian package `prometheus`; .ci/run installs it)"
    rules = []
    for path in RULES:
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "0s"
        rules.append(tmp_path / path.name)
        rules[-1].write_text(yaml.safe_dump(document))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(r) for r in rules],
        "scrape_configs": [
            {"job_name": "fleetgate", "honor_labels": True, "static_configs": [{"targets": [gateway_target]}]},
            {"job_name": "vllm", "static_configs": [{"targets": vllm_targets}]}],
    }))
    port = free_port()
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "prometheus.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not get ready in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


async def _api(url: str, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}") as answer:
            document = await answer.json()
    assert document["status"] == "success", document
    return document["data"]


async def _until(what: str, check: Any, timeout_s: float = 90) -> Any:
    """Poll the async `check` until it returns something truthy (bounded); its last answer on failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        await asyncio.sleep(0.5)


def _host(url: str) -> str:
    return url.removeprefix("http://")


async def _load(client: openai.AsyncOpenAI, doomed: openai.AsyncOpenAI, worker: int, *, workers: int,
                requests: int, pause_s: float, distinct: int, max_tokens: int) -> None:
    """One worker's share of a bounded load: questions streamed and not, repeats (cache hits) and, every
    sixth, a request admission must shed."""
    for n in range(worker, requests, workers):
        messages = [{"role": "user", "content": f"Question number {n % distinct} about routing?"}]
        if n % 6 == 5:
            with pytest.raises(openai.APIStatusError) as refused:
                await doomed.chat.completions.create(model=MODEL, max_tokens=4, messages=messages)
            assert refused.value.status_code == 503
        elif n % 2:
            stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                          stream=True)
            assert [chunk async for chunk in stream]
        else:
            await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)
        await asyncio.sleep(pause_s)


async def test_real_prometheus_answers_every_dashboard_query_and_alert_and_fires_on_a_killed_instance(
        tmp_path: Path) -> None:
    async with emulators(2, time_scale=0.05) as servers, gateway(
            [s.url for s in servers], policy=_policy(tmp_path / "policy.yaml"), admission=True,
            probe_interval_s=30) as url:  # slow probes: after the kill, requests meet the dead instance first
        with prometheus(tmp_path, _host(url), [_host(s.url) for s in servers]) as prom:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="key-load", max_retries=0, timeout=60)
            doomed = openai.AsyncOpenAI(base_url=url + "/v1", api_key=DOOMED_KEY, max_retries=0, timeout=60)
            await asyncio.gather(*(_load(client, doomed, worker, **LOAD) for worker in range(LOAD["workers"])))

            await servers[1].stop()
            for n in range(4):  # round robin: at least one of these meets the dead instance, is retried, and ejects it
                await client.chat.completions.create(model=MODEL, max_tokens=4,
                                                     messages=[{"role": "user", "content": f"after the kill {n}"}])
            async with aiohttp.ClientSession() as session:
                metrics = await (await session.get(url + "/metrics")).text()
            assert 'fleetgate_instance_up{instance="default-1",model="tiny-llama",pool="default"} 0.0' in metrics

            async def ejected_alert() -> bool:
                alerts = (await _api(prom, "alerts"))["alerts"]
                return any(a["labels"]["alertname"] == "FleetgateInstanceEjected" and a["state"] == "firing"
                           and a["labels"]["instance"] == "default-1" for a in alerts)

            await _until("FleetgateInstanceEjected firing for default-1", ejected_alert)

            queries = {f"{panel.title}: {q.legend}": query_for(q, WINDOW) for panel in PANELS for q in panel.queries}
            queries.update({f"alert {name}": value for name, value in alert_values().items()})
            empty: list[str] = []

            async def all_answer() -> bool:
                empty[:] = [name for name, expr in queries.items() if not (await _api(prom, "query", query=expr))["result"]]
                return not empty

            with contextlib.suppress(AssertionError):  # the message below names the queries that stayed empty
                await _until("every query returns data", all_answer)
            assert not empty, f"queries without data: {empty}"

            out = Path(PICTURE or tmp_path / "panels.png")
            assert main(["observe", "panels", "--prometheus", prom, "--out", str(out), "--minutes", "3",
                         "--window", "30s"]) == 0
            assert out.stat().st_size > 10_000


def test_every_alert_is_written_as_value_operator_threshold() -> None:
    assert set(alert_values()) >= {"FleetgateSloAttainmentLow", "FleetgateInstanceEjected",
                                   "FleetgateUpstreamErrorRatioHigh", "FleetgateCacheStoreDown",
                                   "FleetgateAdmissionShedding", "FleetgateNoHealthyInstance"}
