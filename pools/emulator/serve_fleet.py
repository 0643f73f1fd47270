"""A process that serves an emulated fleet until SIGTERM or Ctrl-C.

    python -m fleetgate.pools.emulator.serve_fleet deploy/fleet.example.yaml --time-scale 0.5
    python -m fleetgate.pools.emulator.serve_fleet --pool chat:llama-3.1-8b:l4:2 --state-file /tmp/fleet.json

`fleetgate fleet up` runs this in the background; the state file (pid and URLs, JSON) appears once
every instance listens, which is how a parent knows the fleet is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import AsyncIterator, Sequence

from fleetgate.pools.config import load_fleet
from fleetgate.pools.emulator.launcher import FleetState
from fleetgate.pools.emulator.local import (
    EmulatedPoolSpec,
    run_emulated_fleet,
    specs_from_fleet,
)
from fleetgate.pools.realvllm import VllmPoolSpec, run_vllm_pools, vllm_pools_from_fleet

log = logging.getLogger("fleetgate.emulator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fleetgate.pools.emulator.serve_fleet", description=__doc__.split("\n")[0])
    parser.add_argument("fleet_file", nargs="?", help="fleet YAML (pools with count/base_port are emulated)")
    parser.add_argument("--pool", action="append", default=[], metavar="NAME:MODEL:GPU:COUNT[:KV_EVENTS_BASE_PORT]",
                        help="an emulated pool on free ports (repeatable)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="wall seconds per emulated second (0.1 runs ten times faster than real time)")
    parser.add_argument("--state-file", type=Path, help="write pid and URLs here (JSON) once every instance listens")
    return parser


def resolve_specs(fleet_file: str | None, pools: Sequence[str]) -> tuple[list[EmulatedPoolSpec], list[VllmPoolSpec]]:
    """Emulator pools (fleet file and --pool) and real vLLM pools (`backend: vllm` in the fleet file)."""
    config = load_fleet(fleet_file) if fleet_file else None
    specs = specs_from_fleet(config) if config else []
    specs += [EmulatedPoolSpec.parse(p) for p in pools]
    vllm_pools = vllm_pools_from_fleet(config) if config else []
    if not specs and not vllm_pools:
        raise ValueError("nothing to start: give a fleet file with count/base_port pools or --pool")
    return specs, vllm_pools


async def serve(specs: Sequence[EmulatedPoolSpec], time_scale: float, state_file: Path | None,
                vllm_pools: Sequence[VllmPoolSpec] = ()) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log_dir = (state_file.parent if state_file else Path(".fleetgate")) / "vllm-logs"
    async with run_emulated_fleet(specs, time_scale=time_scale) as fleet, _real_vllm(vllm_pools, log_dir, stop) as real:
        state = FleetState(os.getpid(), {**fleet.pool_urls(), **real.urls}, fleet.specs() + real.specs)
        if state_file is not None:
            state.write(state_file)
        for name, urls in state.pools.items():
            print(f"{name}: {' '.join(urls)}", flush=True)
        print(f"fleet ready: {len(state.urls)} instances (time scale {time_scale}); SIGTERM or Ctrl-C stops it", flush=True)
        await stop.wait()
        log.info("stopping the emulated fleet")
    if state_file is not None and state_file.exists() and FleetState.read(state_file).pid == os.getpid():
        state_file.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        specs, vllm_pools = resolve_specs(args.fleet_file, args.pool)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(specs, args.time_scale, args.state_file, vllm_pools))
    except InterruptedError:  # stopped while real vLLM was still starting
        return 1
    return 0


class _RealPools:
    def __init__(self, pools: Sequence[VllmPoolSpec], fleets: dict) -> None:
        self.urls = {name: fleet.urls for name, fleet in fleets.items()}
        self.specs = [pool.state() for pool in pools]


@contextlib.asynccontextmanager
async def _real_vllm(pools: Sequence[VllmPoolSpec], log_dir: Path, stop: asyncio.Event) -> AsyncIterator[_RealPools]:
    """Real vLLM pools beside the emulated ones; their minute-long start and their stop run in a
    thread so the emulators keep serving, and a SIGTERM meanwhile still stops them."""
    with contextlib.ExitStack() as stack:
        fleets = await asyncio.to_thread(
            stack.enter_context, run_vllm_pools(pools, log_dir=log_dir, should_stop=stop.is_set))
        try:
            yield _RealPools(pools, fleets)
        finally:
            await asyncio.to_thread(stack.close)


if __name__ == "__main__":
    sys.exit(main())
