"""Prefix-cache hit ratio of real vLLM behind the gateway, per router, read from vLLM's own
counters (`vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`, deltas over a run).

Each run: reset every instance's prefix cache (vLLM's dev endpoint, so start the instances with
VLLM_SERVER_DEV_MODE=1), start `fleetgate serve --bare --router NAME` in front of them, replay the
same trace slice through it, wait until vLLM is idle, scrape again. deploy/vllm-cpu/cache_check.py
is the command; the realvllm test tier runs a short slice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import aiohttp

from fleetgate.loadgen.replay import ReplayConfig, replay_trace
from fleetgate.loadgen.traces import (
    TraceRequest,
    TraceResult,
    compress_idle,
    read_trace,
)
from fleetgate.pools.config import FleetConfig, InstanceConfig, PoolConfig, dump_fleet
from fleetgate.pools.scrape import parse_vllm_metrics

DEV_MODE_ENV = (("VLLM_SERVER_DEV_MODE", "1"),)  # VllmSettings.extra_env that enables /reset_prefix_cache


@dataclass(frozen=True, slots=True)
class TraceSlice:
    requests: tuple[TraceRequest, ...]
    sessions: int
    dropped_too_long: int
    prompt_tokens: tuple[int, ...]  # tiny-tokenizer counts of the kept requests, chat template applied


@dataclass(frozen=True, slots=True)
class Counters:
    queries_tokens: float
    hits_tokens: float
    requests: float  # vllm:request_success_total


@dataclass(frozen=True, slots=True)
class RouterRun:
    router: str
    queries_tokens: float
    hits_tokens: float
    requests_per_instance: tuple[int, ...]
    errors: int
    ttft_p50_ms: float | None
    wall_s: float

    @property
    def hit_ratio(self) -> float:
        return self.hits_tokens / self.queries_tokens if self.queries_tokens else 0.0


def select_slice(trace: str | Path, model_dir: Path, *, max_requests: int, max_gap_s: float, output_cap_tokens: int,
                 max_model_len: int) -> TraceSlice:
    """The first `max_requests` requests (in arrival order) whose prompt, as the tiny model's chat
    template renders and its tokenizer counts it, plus the capped output fits the context; later
    turns of long agent sessions outgrow 4096 tokens and are dropped, not truncated (a truncated
    prompt would share its whole text with the next turn and fake hits). Idle gaps are then
    shortened to `max_gap_s`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    kept: list[TraceRequest] = []
    counts: list[int] = []
    dropped = 0
    for request in read_trace(trace, "openai-jsonl").requests:
        if len(kept) >= max_requests:
            break
        output_tokens = min(request.output_tokens, output_cap_tokens)
        text = request.prompt if request.prompt is not None else tokenizer.apply_chat_template(
            list(request.messages or ()), tokenize=False, add_generation_prompt=True)
        tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
        if tokens + output_tokens > max_model_len:
            dropped += 1
            continue
        kept.append(replace(request, output_tokens=output_tokens))
        counts.append(tokens)
    compressed = compress_idle(TraceResult(tuple(kept), [], 0), max_gap_s).requests
    return TraceSlice(compressed, len({r.session_id for r in kept}), dropped, tuple(counts))


async def scrape(session: aiohttp.ClientSession, url: str) -> Counters:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    load = parse_vllm_metrics(text)
    requests = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total"))
    return Counters(load.prefix_queries_tokens, load.prefix_hits_tokens, requests)


async def reset_prefix_cache(session: aiohttp.ClientSession, url: str, timeout_s: float = 30.0) -> None:
    """Empty the instance's prefix cache (vLLM refuses while blocks are held: retry, bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with session.post(url + "/reset_prefix_cache") as response:
            if response.status == 404:
                raise RuntimeError(f"{url} has no /reset_prefix_cache: start vLLM with VLLM_SERVER_DEV_MODE=1")
            if response.status == 200 and (await response.json()).get("success"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not reset its prefix cache within {timeout_s:.0f} s")
        await asyncio.sleep(0.5)


async def wait_idle(session: aiohttp.ClientSession, urls: Sequence[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            async with session.get(url + "/metrics") as response:
                load = parse_vllm_metrics(await response.text())
            if load.running == load.waiting == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still busy after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def bare_gateway(urls: Sequence[str], model: str, router: str, port: int, max_model_len: int,
                 timeout_s: float = 60.0) -> Iterator[str]:
    """`fleetgate serve --bare` in a child process, in front of `urls`; yields its base URL once it
    reports every instance healthy."""
    import urllib.request

    import orjson

    with tempfile.TemporaryDirectory(prefix="fleetgate-cache-check-") as tmp:
        fleet_file = Path(tmp) / "fleet.yaml"
        fleet_file.write_text(dump_fleet(FleetConfig(pools=[PoolConfig(
            name="real", model=model, gpu="l4", max_context_tokens=max_model_len,
            instances=[InstanceConfig(url=url) for url in urls])])))
        log = open(Path(tmp) / "gateway.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetgate.app.cli", "serve", "--bare", "--fleet", str(fleet_file), "--router", router,
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(url + "/health", timeout=2) as response:
                        if orjson.loads(response.read()).get("healthy_instances") == len(urls):
                            break
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(f"gateway did not come up: {(Path(tmp) / 'gateway.log').read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


async def measure_router(router: str, urls: Sequence[str], model: str, requests: Sequence[TraceRequest], *,
                         port: int, max_model_len: int, progress: bool = False, label: str | None = None) -> RouterRun:
    """One run of the slice through the gateway with `router`, from cold caches."""
    async with aiohttp.ClientSession() as session:
        await wait_idle(session, urls)
        for url in urls:
            await reset_prefix_cache(session, url)
        before = [await scrape(session, url) for url in urls]
        with bare_gateway(urls, model, router, port, max_model_len) as gateway:
            config = ReplayConfig(target=gateway, model=model, concurrency_cap=256, request_timeout_s=300.0)
            outcome = await replay_trace(list(requests), config, progress=progress)
        await wait_idle(session, urls)
        after = [await scrape(session, url) for url in urls]
    ttfts = [r.ttft_ms for r in outcome.results if r.ttft_ms is not None and r.error is None]
    return RouterRun(
        router=label or router,
        queries_tokens=sum(a.queries_tokens - b.queries_tokens for a, b in zip(after, before)),
        hits_tokens=sum(a.hits_tokens - b.hits_tokens for a, b in zip(after, before)),
        requests_per_instance=tuple(round(a.requests - b.requests) for a, b in zip(after, before)),
        errors=sum(1 for r in outcome.results if r.error is not None),
        ttft_p50_ms=statistics.median(ttfts) if ttfts else None,
        wall_s=outcome.wall_s,
    )


def format_table(runs: Sequence[RouterRun]) -> str:
    lines = [f"{'router':<22}{'hit ratio':>10}{'hit / queried tokens':>26}{'requests per instance':>24}"
             f"{'errors':>8}{'TTFT p50':>10}{'wall':>8}"]
    for run in runs:
        ttft = f"{run.ttft_p50_ms:.0f} ms" if run.ttft_p50_ms is not None else "-"
        lines.append(f"{run.router:<22}{run.hit_ratio:>10.3f}{f'{run.hits_tokens:,.0f} / {run.queries_tokens:,.0f}':>26}"
                     f"{' / '.join(map(str, run.requests_per_instance)):>24}{run.errors:>8}{ttft:>10}{run.wall_s:>7.0f}s")
    return "\n".join(lines)
