"""Run N real vLLM instances (CPU build, tiny model) on 127.0.0.1 until Ctrl-C or SIGTERM.

    python deploy/vllm-cpu/launch.py --count 2 --base-port 8301
    python deploy/vllm-cpu/launch.py --count 1 --base-port 8301 --model-dir /models/other --name other

Prints the URLs once every /health answers (about 50-70 s per instance), then waits. Needs the
environment from deploy/vllm-cpu/setup.sh (--venv, default ./.vllm-venv); writes the tiny model
first when --model-dir has none. Any Python 3.11 runs this script: it only starts processes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from fleetgate.pools.realvllm import (
    READY_TIMEOUT_S,
    VllmNotInstalled,
    VllmSettings,
    run_vllm,
)


def main(argv: list[str] | None = None) -> int:
    defaults = VllmSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1, help="instances (2 is the most two cores serve well)")
    parser.add_argument("--base-port", type=int, default=8301, help="first port; instance i listens on base+i")
    parser.add_argument("--venv", type=Path, default=defaults.venv, help=f"vLLM environment (default {defaults.venv})")
    parser.add_argument("--model-dir", type=Path, default=defaults.model_dir, help=f"default {defaults.model_dir}")
    parser.add_argument("--name", default=defaults.served_model_name, help="served model name")
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--log-dir", type=Path, default=Path(".fleetgate/vllm-logs"), help="one log per instance")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait for /health")
    args = parser.parse_args(argv)
    settings = VllmSettings(venv=args.venv, model_dir=args.model_dir, served_model_name=args.name,
                            max_model_len=args.max_model_len)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ports = [args.base_port + i for i in range(args.count)]
    try:
        with run_vllm(settings, ports, log_dir=args.log_dir, timeout_s=args.timeout, should_stop=stop.is_set) as fleet:
            print(" ".join(fleet.urls), flush=True)
            print(f"{len(fleet.urls)} vLLM instances ready (logs in {args.log_dir}); Ctrl-C stops them", flush=True)
            stop.wait()
    except InterruptedError:
        return 130
    except (VllmNotInstalled, RuntimeError, TimeoutError) as exc:
        print(f"launch failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
