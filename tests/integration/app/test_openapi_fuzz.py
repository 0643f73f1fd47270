"""Schemathesis against a live bare gateway in front of an emulated instance: every endpoint of the
gateway's own OpenAPI document (GET /openapi.json), with generated valid and invalid requests, must
answer without a server error. Bounded: a fixed number of examples per operation and a fixed seed."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
from support.gateway import ACCOUNTS_CACHE_POLICY, emulators, gateway

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25


async def test_openapi_document_lists_the_routes() -> None:
    async with emulators(1) as servers, gateway([s.url for s in servers]) as url:
        async with aiohttp.ClientSession() as session:
            document = await (await session.get(url + "/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/messages", "/v1/responses", "/admin/explain", "/openapi.json"} <= set(
        document["paths"])


async def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ACCOUNTS_CACHE_POLICY)
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is in the test extra (pip install -e '.[test]')"
    async with emulators(1) as servers, gateway([s.url for s in servers], policy=str(policy)) as url:
        process = await asyncio.create_subprocess_exec(
            st, "run", url + "/openapi.json", "--checks", "not_a_server_error",
            "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "16", "--workers", "1",
            "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
            "--exclude-path", "/admin/instances",  # changes the fleet under the other operations
            "--exclude-path", "/admin/policy/reload",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
        output, _ = await asyncio.wait_for(process.communicate(), 600)
    assert process.returncode == 0, output.decode()[-8000:]
