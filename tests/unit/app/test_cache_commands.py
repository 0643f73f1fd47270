"""`fleetgate cache calibrate|eval|train-verifier` and `bench cache-verify` from the command line (the hashing
embedder: no model download; the shipped verifier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fleetgate.app.cli import build_parser, main
from fleetgate.cache import evaluate as ev
from fleetgate.cache import verify_bench, verify_train
from fleetgate.cache.policy import CachePolicy

PAIRS = [  # the hashing embedder sees words: "accounts" separates its pairs, "geography" cannot
    ev.Pair("How do I reset my password?", "how do I reset my password", True, "accounts"),
    ev.Pair("How do I reset my password?", "What is the weather in Paris today?", False, "accounts"),
    ev.Pair("Where is Paris?", "In which country can I find the city of Paris?", True, "geography"),
    ev.Pair("What is the capital of France?", "What is the capital of Germany?", False, "geography"),
]


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    ev.write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    return tmp_path / "pairs.jsonl"


def test_calibrate_writes_a_cache_policy_per_category(pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calibrated.yaml"
    assert main(["cache", "calibrate", "--pairs", str(pairs_file), "--target-precision", "0.9", "--confidence-z", "0",
                 "--embedder", "hashing", "--out", str(out)]) == 0
    assert capsys.readouterr().out == out.read_text()
    categories = {c["name"]: CachePolicy.model_validate(c["cache"]) for c in yaml.safe_load(out.read_text())["categories"]}
    assert categories["accounts"].enabled and 0 < categories["accounts"].threshold <= 1.0
    assert not categories["geography"].enabled  # its wrong pair is the more similar one: no rule reaches 0.9


def test_eval_reports_precision_intervals_with_and_without_the_verifier(pairs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert main(["cache", "eval", "--pairs", str(pairs_file), "--embedder", "hashing", "--threshold", "0.05", "--out", str(out)]) == 0
    geography = json.loads(out.read_text())["per_category"]["geography"]
    assert geography["verify"] is True and geography["threshold"] == 0.05  # --threshold, with the shipped verifier point
    assert (geography["without_verifier"]["hits"], geography["without_verifier"]["precision"]) == (2, 0.5)
    assert geography["with_verifier"]["hits"] == 0  # at these low cosines the verifier accepts neither
    low, high = geography["without_verifier"]["precision_ci95"]
    assert 0.0 < low < 0.5 < high < 1.0


def test_the_verifier_tools_are_fleetgate_commands() -> None:
    train = build_parser().parse_args(["cache", "train-verifier", "--target-precision", "0.9", "--confidence-z", "1.645"])
    assert train.func is verify_train.run and (train.target_precision, train.confidence_z) == (0.9, 1.645)
    bench = build_parser().parse_args(["bench", "cache-verify", "--pairs", "50", "--no-embedding"])
    assert bench.func is verify_bench.run and (bench.pairs, bench.no_embedding) == (50, True)
