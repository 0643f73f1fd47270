"""Per-category hit rules for a target precision, and how they score with and without the verifier.

`fleetgate cache calibrate` (`calibrate`, `calibration_yaml`): per category of an operator's labelled
pairs, the rule with the most recall whose precision reaches the target, either the lowest cosine
threshold that does alone or a cosine floor plus a verifier threshold (verify_train's operating
point search), written as policy YAML. `fleetgate cache eval` without pairs (`standard_eval`): the
STS-B and semantic-router experiments of evaluate.py, each also under a policy's verifier settings,
and the held-out QQP split under every enabled category's rule of the policy, as set and relaxed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from fleetgate.cache import evaluate as ev
from fleetgate.cache import verify_train as vt
from fleetgate.cache.embed import Embedder
from fleetgate.cache.policy import CachePolicy
from fleetgate.cache.verify import VerifierModel

GUARD_KEEP = 0.95  # a guard verifier threshold keeps this share of the hits the cosine threshold alone gets right
CASES_DEFAULT_CATEGORY = "other"  # semantic-router's label for "no special topic"


@dataclass(frozen=True, slots=True)
class HitRule:
    """A hit: cosine >= `threshold` and, unless `verifier_threshold` is None, a verifier score >= it."""

    threshold: float
    verifier_threshold: float | None = None

    @classmethod
    def of(cls, policy: CachePolicy, model: VerifierModel, *, relaxed: bool = False) -> HitRule:
        """What a category's cache policy serves by; `relaxed`: under load (only the cosine threshold moves)."""
        threshold = policy.adaptive.min_threshold if relaxed and policy.adaptive is not None else policy.threshold
        if not policy.verify:
            return cls(threshold)
        return cls(threshold, model.operating_point.threshold if policy.verifier_threshold is None else policy.verifier_threshold)

    def as_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold, "verify": self.verifier_threshold is not None, "verifier_threshold": self.verifier_threshold}


NEVER = HitRule(ev.DISABLED)  # a category that is not cached


def _floor(value: float, digits: int = 4) -> float:
    """Rounded down, so a printed threshold still admits every hit the exact one did."""
    return math.floor(value * 10**digits) / 10**digits


def _scored(probes: list[ev.Probe]) -> vt.Scored:
    """verify_train's array form of probes (a hit's correctness is the label its tuners maximise)."""
    return vt.Scored(np.array([p.similarity for p in probes]), np.array([p.verifier for p in probes], dtype=np.float64),
                     np.array([p.correct for p in probes]))


def cosine_rule(probes: list[ev.Probe], target: float, z: float) -> tuple[int, HitRule] | None:
    """(correct hits, rule) of the lowest cosine threshold alone whose precision (its Wilson lower bound at z) reaches `target`."""
    found = vt.best_threshold(np.array([p.similarity for p in probes]), np.array([p.correct for p in probes]), target, z)
    return None if found is None else (found[0], HitRule(_floor(found[1])))


def verifier_rule(probes: list[ev.Probe], target: float, z: float) -> tuple[int, HitRule] | None:
    """(correct hits, rule) of verify_train's best cosine floor + verifier threshold for `target` (probes need verifier scores)."""
    point = vt.choose_operating_point(_scored(probes), target, z)
    if point is None:
        return None
    rule = HitRule(_floor(point.cosine_floor), _floor(point.threshold))
    return ev.score(probes, rule.threshold, rule.verifier_threshold).correct_hits, rule


def best_rule(probes: list[ev.Probe], target: float, z: float) -> HitRule | None:
    """The rule with the most correct hits whose precision reaches `target`, or None when none does.

    On a tie the verifier's, which also refuses the number, name and negation mismatches a small
    labelled set may not show.
    """
    candidates = [c for c in (verifier_rule(probes, target, z), cosine_rule(probes, target, z)) if c is not None]
    return max(candidates, key=lambda candidate: candidate[0])[1] if candidates else None


def calibrate(probes: list[ev.Probe], target: float, z: float) -> dict[str, HitRule | None]:
    """`best_rule` per category."""
    return {category: best_rule(group, target, z) for category, group in sorted(ev.by_category(probes).items())}


def judge(probes: list[ev.Probe], rules: Mapping[str, HitRule], default: HitRule = NEVER) -> dict[str, object]:
    """Per category (its rule, else `default`) and overall: with the rule, and with its cosine threshold alone."""
    rule_of = {c: rules.get(c, default) for c in ev.by_category(probes)}
    thresholds = {c: r.threshold for c, r in rule_of.items()}
    verifier = {c: r.verifier_threshold for c, r in rule_of.items() if r.verifier_threshold is not None}
    with_scores, with_total = ev.score_per_category(probes, thresholds, ev.DISABLED, verifier)
    alone_scores, alone_total = ev.score_per_category(probes, thresholds, ev.DISABLED)
    return {
        "per_category": {c: {**rule_of[c].as_dict(), "with_verifier": s.as_dict(), "without_verifier": alone_scores[c].as_dict()}
                         for c, s in with_scores.items()},
        "overall": {"with_verifier": with_total.as_dict(), "without_verifier": alone_total.as_dict()},
    }


def guard_threshold(probes: list[ev.Probe], threshold: float, keep: float = GUARD_KEEP) -> float:
    """The verifier threshold that keeps `keep` of the correct hits at cosine `threshold`: the verifier as a guard
    that refuses the clearest mismatches without the recall a precision target would cost."""
    scores = [p.verifier for p in probes if p.correct and p.similarity >= threshold and p.verifier is not None]
    return _floor(float(np.quantile(scores, 1 - keep))) if scores else 0.0


def calibrated_report(tune: list[ev.Probe], test: list[ev.Probe], target: float, z: float) -> dict[str, object]:
    """Rules calibrated on `tune` and judged on `test`, next to the cosine thresholds alone chosen by the same rule."""
    grouped = ev.by_category(tune)
    alone = {c: (cosine_rule(group, target, z) or (0, NEVER))[1].threshold for c, group in grouped.items()}
    return {
        "rule": f"per category, the most recall on tune whose precision's Wilson lower bound at z={z} reaches {target}",
        "calibrated": judge(test, {c: rule or NEVER for c, rule in calibrate(tune, target, z).items()}),
        "cosine_alone": ev.evaluate(test, alone, ev.DISABLED),
    }


def calibration_yaml(probes: list[ev.Probe], target: float, z: float) -> str:
    """Policy YAML of `calibrate`'s rules, each with what it measured on these same pairs as a comment."""
    grouped = ev.by_category(probes)
    lines = [
        "# fleetgate cache calibrate: per category, the rule with the most recall whose precision on these pairs",
        f"# (its one-sided Wilson lower bound at z={z}) reaches {target}. Figures below are measured on the same",
        "# pairs, so judge them on pairs you did not calibrate on. Paste each `cache:` under your categories[].cache.",
        "categories:",
    ]
    for category, rule in calibrate(probes, target, z).items():
        lines.append(f"  - name: {json.dumps(category)}")
        if rule is None:
            lines += [f"    # {len(grouped[category])} pairs: no rule reaches precision {target}; do not cache this category",
                      "    cache:", "      enabled: false"]
            continue
        s = ev.score(grouped[category], rule.threshold, rule.verifier_threshold)
        low, high = ev.wilson_interval(s.correct_hits, s.hits)
        lines += [f"    # {s.lookups} pairs ({s.positives} similar): precision {s.precision:.3f} [95% CI {low:.3f}, {high:.3f}], "
                  f"recall {s.recall:.3f}", "    cache:", "      enabled: true", f"      threshold: {rule.threshold}",
                  f"      verify: {json.dumps(rule.verifier_threshold is not None)}"]
        if rule.verifier_threshold is not None:
            lines.append(f"      verifier_threshold: {rule.verifier_threshold}")
    return "\n".join(lines) + "\n"


def qqp_report(splits: Mapping[str, list[ev.Pair]], vectors: dict[str, np.ndarray], model: VerifierModel,
               policies: Mapping[str, CachePolicy], target: float) -> dict[str, object]:
    """The held-out QQP split (verify_train's split by question) under: the issue's cosine 0.9, cosine alone and
    cosine + verifier tuned on the tune split for `target` (measured precision), and every enabled category of
    the policy as set, without its verifier, and relaxed to `adaptive.min_threshold` (its verifier unchanged).
    Also the guard verifier threshold (`guard_threshold` on tune) at each of the policy's cosine thresholds."""
    tune = ev.probe_pairs(vt.balanced(splits["tune"]), vectors, model)
    enabled = {name: policy for name, policy in sorted(policies.items()) if policy.enabled}
    rules = {s.name: HitRule(s.floor, None if s.threshold == vt.NO_VERIFIER else s.threshold)
             for s in vt.tuned_settings(_scored(tune), [target], 0.0)}
    for name, policy in enabled.items():
        rules[f"policy {name}"] = rule = HitRule.of(policy, model)
        rules[f"policy {name}, verifier off"] = HitRule(rule.threshold)
        if policy.adaptive is not None:
            rules[f"policy {name}, relaxed under load"] = HitRule.of(policy, model, relaxed=True)
    samples = {"balanced": ev.probe_pairs(vt.balanced(splits["test"]), vectors, model),
               "natural": ev.probe_pairs(splits["test"], vectors, model)}
    return {
        "samples": {"balanced": "every held-out duplicate and as many non-duplicates (as the issue's 500/500)",
                    "natural": "every held-out pair (QQP's own mix)"},
        f"guard_verifier_threshold_keeping_{GUARD_KEEP}_on_tune": {p.threshold: guard_threshold(tune, p.threshold) for p in enabled.values()},
        "rules": {name: {**rule.as_dict(), **{k: ev.score(p, rule.threshold, rule.verifier_threshold).as_dict() for k, p in samples.items()}}
                  for name, rule in rules.items()},
    }


def standard_eval(traces: Path, embedder: Embedder, model: VerifierModel, target: float,
                  policies: Mapping[str, CachePolicy], default_category: str, *, progress: bool = True) -> dict[str, object]:
    """The issue's experiments: STS-B genres tuned on train and judged on dev (cosine alone, and with each verifier
    threshold the policy uses on top), the semantic-router cases (at their declared thresholds, and under the
    policy's rules), and QQP. The verifier was fitted on sts-train, so its thresholds are never chosen there."""
    train = ev.stsb_pairs(traces / "stsb" / "sts-train.csv")
    dev = ev.stsb_pairs(traces / "stsb" / "sts-dev.csv")
    cases, declared = ev.cache_case_pairs(traces / "semantic_router" / "cache_cases.json")
    qqp = vt.split_by_question(ev.read_pairs(traces / "qqp" / "train.jsonl"))
    texts = [t for p in train + dev + cases + qqp["tune"] + qqp["test"] for t in (p.text_a, p.text_b)]
    vectors = ev.embed_all(embedder, texts, progress=progress)
    train_probes, dev_probes = ev.probe_pairs(train, vectors, model), ev.probe_pairs(dev, vectors, model)
    report = ev.tuned_report(train_probes, dev_probes, target)
    per_category, uniform = ev.tune(train_probes, target)
    policy_rules = {c: HitRule.of(p, model) for c, p in policies.items() if p.enabled}
    report["stsb_with_verifier"] = {f"at_{v}": judge(dev_probes, {c: HitRule(t, v) for c, t in per_category.items()})
                                    for v in sorted({r.verifier_threshold for r in policy_rules.values() if r.verifier_threshold is not None})}
    shared_probes, search_s = ev.probe_shared(dev, vectors, embedder.dim)
    report["dev_shared_namespace"] = ev.evaluate(shared_probes, per_category, ev.DISABLED)["overall"]
    case_probes, _ = ev.probe_shared(cases, vectors, embedder.dim, model, one_namespace=True)
    report["cache_cases"] = {
        f"at_{name}": ev.evaluate(case_probes, {}, threshold)["overall"]
        for name, threshold in [(f"stsb_uniform_{uniform:.3f}", uniform), *((f"declared_{t}", t) for t in sorted(set(declared.values())))]
    }
    as_policy = [replace(p, category=default_category if p.category == CASES_DEFAULT_CATEGORY else p.category) for p in case_probes]
    report["cache_cases_under_policy"] = judge(as_policy, policy_rules)
    report["qqp_held_out"] = qqp_report(qqp, vectors, model, policies, target)
    report["pairs"] = {"train": len(train), "dev": len(dev), "cache_cases": len(cases), "qqp_tune": len(qqp["tune"]), "qqp_test": len(qqp["test"])}
    report["latency"] = {"embed_one": ev.latency_summary(ev.embedding_latencies(embedder, [p.text_b for p in dev])),
                         "search": ev.latency_summary(search_s)}
    return report
