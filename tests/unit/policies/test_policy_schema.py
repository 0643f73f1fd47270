"""One failing policy per validation and conflict rule, each asserting the YAML path it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.core.yamlconf import ConfigError
from fleetgate.policies.conflicts import errors
from fleetgate.policies.load import check_file, check_text, load_policy

POOLS = """\
version: 1
pools:
  - {name: chat-small, model: llama, gpu: l4, count: 1, base_port: 9101}
  - {name: general, model: llama, gpu: a100, count: 1, base_port: 9201}
  - {name: long-context, model: llama, gpu: h100, max_context_tokens: 32768, count: 1, base_port: 9301}
  - {name: coder, model: code-llama, gpu: a100, count: 1, base_port: 9401}
categories:
  - {name: code, keywords: [python]}
  - {name: health, exemplars: [how much sleep do I need]}
"""


def policy(rules: str = "", extra: str = "") -> str:
    """POOLS ends inside `categories:`, so `extra` may add a category ("  - ...") or a top-level key."""
    return POOLS + extra + ("rules:\n" + rules if rules else "")


def findings_of(text: str, severity: str) -> list[tuple[str, str]]:
    _, findings = check_text(text)
    return [(f.path, f.message) for f in findings if f.severity == severity]


# (yaml, path, message fragment): schema problems, reported before anything else
SCHEMA_CASES = [
    ("version: 2\n", "version", "Input should be 1"),
    ("rules: []\n", "version", "Field required"),
    ("version: 1\nbogus: 1\n", "bogus", "Extra inputs are not permitted"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {api: chatt}}\n", "rules[0].match.api[0]", "'chat' or 'completions'"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {shape: fat}}\n", "rules[0].match.shape[0]", "prefill-heavy"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {context_class: huge}}\n", "rules[0].match.context_class[0]", "very-long"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {colour: red}}\n", "rules[0].match.colour", "Extra inputs"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {prompt_tokens_min: 10, prompt_tokens_max: 5}}\n", "rules[0].match", "can never match"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {prompt_tokens_max: -1}}\n", "rules[0].match.prompt_tokens_max", "greater than or equal to 0"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], match: {category: []}}\n", "rules[0].match.category", "at least 1 item"),
    ("version: 1\nrules:\n  - {name: R!, pools: [a]}\n", "rules[0].name", "should match pattern"),
    ("version: 1\nrules:\n  - {pools: [a]}\n", "rules[0].name", "Field required"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], ttft_slo_ms: 0}\n", "rules[0].ttft_slo_ms", "greater than 0"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], tpot_slo_ms: -5}\n", "rules[0].tpot_slo_ms", "greater than 0"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], key_blocks: 0}\n", "rules[0].key_blocks", "greater than or equal to 1"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], router: {nam: x}}\n", "rules[0].router.nam", "Extra inputs"),
    ("version: 1\nrules:\n  - {name: r, pools: [a], router: 5}\n", "rules[0].router", "valid dictionary"),
    ("version: 1\ncategories:\n  - {name: c, keywords: ['']}\n", "categories[0].keywords[0]", "at least 1 character"),
    ("version: 1\ncategories:\n  - {name: c, cache: {threshold: 1.5}}\n", "categories[0].cache.threshold", "less than or equal to 1"),
    ("version: 1\ncategories:\n  - {name: c, cache: {ttl_s: 0}}\n", "categories[0].cache.ttl_s", "greater than 0"),
    ("version: 1\ncategories:\n  - {name: c, cache: {max_entries: 0}}\n", "categories[0].cache.max_entries", "greater than or equal to 1"),
    ("version: 1\ncategories:\n  - {name: c, cache: {cacheable: {max_n: 0}}}\n", "categories[0].cache.cacheable.max_n", "greater than or equal to 1"),
    ("version: 1\ncategories:\n  - {name: c, cache: {threshold: 0.8, adaptive: {min_threshold: 0.9, max_ttl_s: 7200}}}\n", "categories[0].cache", "min_threshold must not exceed"),
    ("version: 1\ncategories:\n  - {name: c, cache: {ttl_s: 600, adaptive: {min_threshold: 0.5, max_ttl_s: 60}}}\n", "categories[0].cache", "max_ttl_s must not be below"),
    ("version: 1\nclassifier: {short_max_tokens: 9000}\n", "classifier", "thresholds must increase"),
    ("version: 1\nclassifier: {prefill_heavy_min_ratio: 0.5}\n", "classifier", "decode_heavy_max_ratio must be below"),
    ("version: 1\nclassifier: {chat_output_tokens: 0}\n", "classifier", "must be positive"),
    ("version: 1\nclassifier: {colour: 1}\n", "classifier.colour", "Unexpected keyword"),
    ("version: 1\ntopic: {min_similarity: 2}\n", "topic.min_similarity", "less than or equal to 1"),
    ("version: 1\ndefaults: {key_blocks: 0}\n", "defaults.key_blocks", "greater than or equal to 1"),
    ("version: 1\nfleet: f.yaml\npools: []\n", "", "not both"),
    ("version: 1\npools:\n  - {name: a, model: m, gpu: tpu, count: 1, base_port: 1}\n", "pools[0].gpu", "unknown GPU profile"),
    ("version: 1\npools:\n  - {name: a, model: m, count: 1, base_port: 1}\n  - {name: a, model: m, count: 1, base_port: 2}\n", "pools", "must be unique"),
    ("version: 1\nrules: [\n", "", "not valid YAML"),
    ("- 1\n", "", "must be a mapping"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), SCHEMA_CASES, ids=[c[1] or c[2] for c in SCHEMA_CASES])
def test_schema_errors_name_the_yaml_path(text, path, fragment):
    loaded, findings = check_text(text)
    assert loaded is None
    reported = [(f.path, f.message) for f in errors(findings)]
    assert any(p == path and fragment in m for p, m in reported), reported


# (rules yaml, extra top-level yaml, path, message fragment): errors found by the conflict checks
CONFLICT_ERRORS = [
    ("  - {name: r, pools: [nope]}\n", "", "rules[0].pools[0]", "unknown pool 'nope'"),
    ("  - {name: r, pools: [general, nope]}\n", "", "rules[0].pools[1]", "unknown pool 'nope'"),
    ("", "defaults: {pools: [gone]}\n", "defaults.pools[0]", "unknown pool 'gone'"),
    ("  - {name: r, pools: [general], match: {model: gpt-9}}\n", "", "rules[0].match.model[0]", "no pool serves model 'gpt-9'"),
    ("  - {name: r, pools: [general], match: {category: cooking}}\n", "", "rules[0].match.category[0]", "unknown category 'cooking'"),
    ("  - {name: r, pools: [general], router: dualmapp}\n", "", "rules[0].router.name", "unknown router 'dualmapp'"),
    ("", "defaults: {router: {name: fastest}}\n", "defaults.router.name", "unknown router 'fastest'"),
    ("  - {name: r, pools: [general], router: {name: dualmap, params: {hotness: 2}}}\n", "", "rules[0].router.params", "bad parameters"),
    ("  - {name: r, pools: [general], cache: cooking}\n", "", "rules[0].cache", "unknown cache policy 'cooking'"),
    ("", "defaults: {cache: sometimes}\n", "defaults.cache", "unknown cache policy 'sometimes'"),
    ("  - {name: r, pools: [general], match: {api: chat}}\n  - {name: r, pools: [general], match: {api: completions}}\n", "", "rules[1].name", "already the name of rules[0]"),
    ("", "  - {name: code}\n", "categories[2].name", "already the name of categories[0]"),
    # shadowing: the earlier rule's conditions are weaker
    ("  - {name: agents, pools: [long-context], match: {agentic: true}}\n"
     "  - {name: agent-sessions, pools: [general], match: {agentic: true, has_session: true}}\n", "", "rules[1].match", "rules[0] (agents) comes first"),
    ("  - {name: all, pools: [general]}\n  - {name: chat, pools: [chat-small], match: {api: chat}}\n", "", "rules[1].match", "rules[0] (all) comes first"),
    ("  - {name: long, pools: [long-context], match: {context_class: [long, very-long]}}\n"
     "  - {name: huge, pools: [general], match: {prompt_tokens_min: 20000}}\n", "", "rules[1].match", "rules[0] (long) comes first"),
    ("  - {name: health, pools: [general], match: {category: [health, code]}}\n"
     "  - {name: code, pools: [chat-small], match: {category: code, api: chat}}\n", "", "rules[1].match", "rules[0] (health) comes first"),
    ("  - {name: small, pools: [general], match: {prompt_tokens_max: 4000}}\n"
     "  - {name: large, pools: [long-context], match: {prompt_tokens_min: 4001}}\n"
     "  - {name: chat, pools: [chat-small], match: {api: chat}}\n", "", "rules[2].match", "together match everything"),
    # unsatisfiable rules
    ("  - {name: r, pools: [general], match: {context_class: short, prompt_tokens_min: 5000}}\n", "", "rules[0].match", "context_class and prompt_tokens bounds do not overlap"),
    ("  - {name: r, pools: [coder], match: {model: llama}}\n", "", "rules[0].match", "serve none of the models"),
    ("  - {name: r, pools: [general], match: {api: completions, multi_turn: true}}\n", "", "rules[0].match", "completions API"),
    # SLOs a pool's GPU cannot meet for the rule's context range (first pool: error)
    ("  - {name: r, pools: [chat-small], ttft_slo_ms: 300, match: {context_class: short}}\n", "", "rules[0].ttft_slo_ms", "over the 300 ms TTFT SLO"),
    ("  - {name: r, pools: [long-context], ttft_slo_ms: 500, match: {context_class: [long, very-long]}}\n", "", "rules[0].ttft_slo_ms", "32768 prompt tokens"),
    ("  - {name: r, pools: [chat-small], match: {context_class: medium}}\n", "defaults: {ttft_slo_ms: 1000}\n", "rules[0].pools[0]", "(from defaults.ttft_slo_ms)"),
]


@pytest.mark.parametrize(("rules", "extra", "path", "fragment"), CONFLICT_ERRORS, ids=[f"{c[2]}-{c[3][:25]}" for c in CONFLICT_ERRORS])
def test_conflict_errors_name_the_yaml_path(rules, extra, path, fragment):
    reported = findings_of(policy(rules, extra), "error")
    assert any(p == path and fragment in m for p, m in reported), reported


CONFLICT_WARNINGS = [
    # overlapping rules sending the same traffic to different pools
    ("  - {name: chat, pools: [chat-small], match: {api: chat, context_class: short}}\n"
     "  - {name: agents, pools: [long-context], match: {agentic: true}}\n", "rules[1].match", "overlaps rules[0] (chat)"),
    # the pool can never hold this rule's prompts, or only some of them
    ("  - {name: r, pools: [long-context, chat-small], match: {context_class: long}}\n", "rules[0].pools[1]", "none of this rule's prompts"),
    ("  - {name: r, pools: [long-context, general], match: {prompt_tokens_max: 30000}}\n", "rules[0].pools[1]", "longer prompts skip it"),
    # a fallback pool missing the SLO is a warning, not an error
    ("  - {name: r, pools: [long-context, chat-small], ttft_slo_ms: 500, match: {context_class: short}}\n", "rules[0].ttft_slo_ms", "'chat-small'"),
]


@pytest.mark.parametrize(("rules", "path", "fragment"), CONFLICT_WARNINGS, ids=[c[1] for c in CONFLICT_WARNINGS])
def test_conflict_warnings_name_the_yaml_path(rules, path, fragment):
    assert findings_of(policy(rules), "error") == []
    reported = findings_of(policy(rules), "warning")
    assert any(p == path and fragment in m for p, m in reported), reported


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ("  - {name: empty}\n", "categories[2]", "no keywords or exemplars"),
        ("  - {name: snake, keywords: [Python]}\n", "categories[2].keywords[0]", "already a keyword of categories[0]"),
    ],
)
def test_category_warnings(extra, path, fragment):
    assert any(p == path and fragment in m for p, m in findings_of(policy(extra=extra), "warning"))


@pytest.mark.parametrize(
    "rules",
    [
        # specific first, general last: an intended pattern, nothing to report
        "  - {name: agents, pools: [long-context], match: {agentic: true}}\n  - {name: rest, pools: [general]}\n",
        # disjoint rules
        "  - {name: chat, pools: [general], match: {api: chat}}\n  - {name: completions, pools: [long-context], match: {api: completions}}\n",
        # overlapping but to the same pools
        "  - {name: a, pools: [general], match: {agentic: true}}\n  - {name: b, pools: [general], match: {has_session: true}}\n",
        # the SLO is checked on the prompts a rule really receives: long ones were taken above
        "  - {name: long, pools: [long-context], match: {context_class: [medium, long, very-long]}}\n"
        "  - {name: chat, pools: [chat-small], ttft_slo_ms: 1000}\n",
        # a rule for another model does not shadow one for this model
        "  - {name: code, pools: [coder]}\n  - {name: rest, pools: [general]}\n",
    ],
)
def test_clean_policies_have_no_findings(rules):
    loaded, findings = check_text(policy(rules))
    assert loaded is not None and findings == []


def test_findings_carry_line_numbers():
    text = policy("  - {name: ok, pools: [general], match: {api: chat}}\n  - name: bad\n    pools: [general, nope]\n")
    _, findings = check_text(text)
    (finding,) = errors(findings)
    assert (finding.path, finding.line) == ("rules[1].pools[1]", text.splitlines().index("    pools: [general, nope]") + 1)


def test_missing_field_is_located_at_its_parent():
    text = "version: 1\nrules:\n  - match: {api: chat}\n"
    (finding,) = errors(check_text(text)[1])
    assert (finding.path, finding.line) == ("rules[0].name", 3)


def test_load_policy_raises_config_error_with_paths(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(policy("  - {name: r, pools: [nope]}\n"))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.problems[0][0] == "rules[0].pools[0]"
    assert "(line " in caught.value.problems[0][1]


def test_fleet_reference_is_relative_to_the_policy(tmp_path: Path):
    (tmp_path / "fleet.yaml").write_text("pools:\n  - {name: only, model: m, count: 1, base_port: 9000}\n")
    (tmp_path / "p.yaml").write_text("version: 1\nfleet: fleet.yaml\nrules:\n  - {name: r, pools: [only]}\n")
    loaded = load_policy(tmp_path / "p.yaml")
    assert set(loaded.pools or {}) == {"only"}
    (tmp_path / "q.yaml").write_text("version: 1\nfleet: missing.yaml\n")
    loaded, findings = check_file(tmp_path / "q.yaml")
    assert loaded is None and errors(findings)[0].path == "fleet"


def test_pools_given_by_the_caller_win(tmp_path: Path):
    from fleetgate.pools.config import parse_fleet

    pools = parse_fleet("pools:\n  - {name: gw, model: llama, count: 1, base_port: 9000}\n").to_pools()
    loaded, findings = check_text(policy("  - {name: r, pools: [gw]}\n"), pools=pools)
    assert loaded is not None and loaded.pools == pools


def test_without_a_fleet_pool_names_are_not_checked():
    loaded, findings = check_text("version: 1\nrules:\n  - {name: r, pools: [anything]}\n")
    assert loaded is not None and loaded.pools is None and findings == []


@pytest.mark.parametrize("name", ["default.yaml", "examples/heterogeneous.yaml", "examples/long_context.yaml", "examples/agents.yaml"])
def test_shipped_policies_check_clean_against_the_example_fleet(name):
    root = Path(__file__).resolve().parents[3]
    loaded, findings = check_file(root / "policies" / name, fleet_path=root / "deploy" / "fleet.example.yaml")
    assert loaded is not None, [str(f) for f in findings]
