"""`fleetgate serve --config deploy/serve.yaml --bare`, as an operator runs it, answers over real HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from support.gateway import MODEL, emulators
from support.servers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


async def models_when_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> dict:
    """GET /v1/models once the gateway answers; fails when the process exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"fleetgate serve exited with {process.returncode}"
            try:
                async with client.get(url + "/v1/models") as response:
                    if response.status == 200:
                        return await response.json()
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the gateway did not answer on {url} within {timeout_s:.0f}s")


async def test_serve_config_bare_answers_models(tmp_path: Path) -> None:
    port = free_port()
    environ = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGATE_")}
    async with emulators(1) as servers:
        command = [sys.executable, "-m", "fleetgate.app.cli", "serve", "--config", "deploy/serve.yaml", "--bare",
                   "--worker-urls", servers[0].url, "--model", MODEL, "--port", str(port)]
        log = tmp_path / "serve.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=output, stderr=subprocess.STDOUT)
            try:
                models = await models_when_ready(f"http://127.0.0.1:{port}", process)
            except AssertionError as error:
                pytest.fail(f"{error}; its output:\n{log.read_text()}")
            finally:
                process.terminate()
                process.wait(20)
    assert [model["id"] for model in models["data"]] == [MODEL]
