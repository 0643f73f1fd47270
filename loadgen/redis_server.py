"""A private redis-server: its own free loopback port and temp dir, stoppable and restartable.

Integration tests use it (tests/support/redis_server.py), and `fleetgate bench chaos` kills and
restarts one under load. Persistence (an append-only file in the temp dir) is on, so a restart
keeps the data: the tests that kill Redis mid-run then check the cache rebuilds from what Redis
still holds.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`start()`, `stop()` (SIGKILL: an outage, not a shutdown), `start()` again on the same port and data."""

    def __init__(self, *, startup_timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: install it (apt-get install redis-server) to run the cache integration tests or bench chaos")
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="fleetgate-redis-"))
        self.port = _free_port()
        self._timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        args = [self._binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self._dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"]
        log_path = self._dir / "redis.log"  # a file, not a pipe: a full pipe would freeze the server
        with log_path.open("ab") as log_file:
            self._process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = log_path.read_text(errors="replace")
                raise RuntimeError(f"redis-server exited with {self._process.returncode} on port {self.port}:\n{output[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)  # polling the port, bounded by the deadline
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{self.port} within {self._timeout_s}s")

    def stop(self) -> None:
        """Kill the server (no clean shutdown) and wait for it to be gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
