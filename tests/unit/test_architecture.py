"""The layers of docs/architecture.md hold, and the distribution installs under `fleetgate` only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept(monkeypatch):
    """The contracts in pyproject.toml: layered areas without cycles, no Ray/Starlette/CLI below the app shell."""
    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0


def test_the_wheel_installs_nothing_but_the_fleetgate_namespace(tmp_path):
    """`import router` (or cache, pools, ...) from an installed wheel must find someone else's package, not ours."""
    source = tmp_path / "source"  # the tracked files only: setuptools would reuse a stale build/ in the checkout
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("fleetgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"fleetgate", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "fleetgate/__init__.py" not in names  # a namespace: no module of its own to shadow
    for area in ("core", "pools", "cache", "router", "policies", "loadgen", "app"):
        assert f"fleetgate/{area}/__init__.py" in names
    assert {"fleetgate/policies/default.yaml", "fleetgate/loadgen/data/mooncake_demo.jsonl", "fleetgate/cache/data/verifier.json"} <= set(names)
