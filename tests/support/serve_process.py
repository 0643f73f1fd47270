"""`fleetgate serve` on Ray Serve as a real process, as an operator runs it, with nothing of the test
session's own Ray in its environment; each process and every Ray process it started (marked by
app/fate.py) is killed at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import openai
from support.gateway import MODEL

from fleetgate.app.fate import owner_mark, reap

READY_TIMEOUT_S = 180.0
"""A Ray start took 15-90 s on the shared 2-core machine under other helpers' load."""


class ServeProcess:
    """One `fleetgate serve --worker-urls URLS --port PORT ...` process; `mark`: its Ray processes' mark."""

    def __init__(self, urls: list[str], port: int, logs: Path, *options: str,
                 environ: dict[str, str] | None = None) -> None:
        clean = {name: value for name, value in os.environ.items()
                 if not name.startswith(("FLEETGATE_", "RAY_SERVE_", "RAY_ADDRESS"))}
        self.port, self.log = port, logs / f"serve-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetgate.app.cli", "serve", "--worker-urls", *urls, "--model", MODEL,
                 "--port", str(port), *options], stdout=out, stderr=subprocess.STDOUT,
                env={**clean, **(environ or {})}, start_new_session=True)
        self.mark = owner_mark(self.process.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Until it says it serves; fails when the process exits or the time is up."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "Fleetgate on Ray Serve" not in self.output():
            assert self.process.poll() is None, f"fleetgate serve exited with {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"fleetgate serve did not start:\n{self.output()}"
            time.sleep(0.2)

    def answer(self) -> str | None:
        """A chat answer, asked with the openai client once the gateway serves."""
        self.wait_ready()
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="k", max_retries=0, timeout=30)
        chat = [{"role": "user", "content": "Name a routing algorithm."}]
        return client.chat.completions.create(model=MODEL, messages=chat, max_tokens=5).choices[0].message.content

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        if self.mark:
            reap(self.mark)


@contextlib.contextmanager
def serve_processes() -> Iterator[list[ServeProcess]]:
    """A list to put started ServeProcesses in; all are stopped at the end, however it ends."""
    started: list[ServeProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()
