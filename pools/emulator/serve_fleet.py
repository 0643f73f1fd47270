"""A process that serves an emulated fleet until SIGTERM or Ctrl-C.

    python -m pools.emulator.serve_fleet deploy/fleet.example.yaml --time-scale 0.5
    python -m pools.emulator.serve_fleet --pool chat:llama-3.1-8b:l4:2 --state-file /tmp/fleet.json

`fleetgate fleet up` runs this in the background; the state file (pid and URLs, JSON) appears once
every instance listens, which is how a parent knows the fleet is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from pools.config import load_fleet
from pools.emulator.launcher import FleetState
from pools.emulator.local import EmulatedPoolSpec, run_emulated_fleet, specs_from_fleet

log = logging.getLogger("fleetgate.emulator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pools.emulator.serve_fleet", description=__doc__.split("\n")[0])
    parser.add_argument("fleet_file", nargs="?", help="fleet YAML (pools with count/base_port are emulated)")
    parser.add_argument("--pool", action="append", default=[], metavar="NAME:MODEL:GPU:COUNT",
                        help="an emulated pool on free ports (repeatable)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="wall seconds per emulated second (0.1 runs ten times faster than real time)")
    parser.add_argument("--state-file", type=Path, help="write pid and URLs here (JSON) once every instance listens")
    return parser


def resolve_specs(fleet_file: str | None, pools: Sequence[str]) -> list[EmulatedPoolSpec]:
    specs = specs_from_fleet(load_fleet(fleet_file)) if fleet_file else []
    specs += [EmulatedPoolSpec.parse(p) for p in pools]
    if not specs:
        raise ValueError("nothing to start: give a fleet file with emulator pools (count/base_port) or --pool")
    return specs


async def serve(specs: Sequence[EmulatedPoolSpec], time_scale: float, state_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with run_emulated_fleet(specs, time_scale=time_scale) as fleet:
        state = FleetState(os.getpid(), fleet.pool_urls(), fleet.specs())
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
        specs = resolve_specs(args.fleet_file, args.pool)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    asyncio.run(serve(specs, args.time_scale, args.state_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
