"""`fleetgate policy check|explain|eval-topics` and `fleetgate bench classify` (see app/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleetgate.policies.load import BUILTIN_POLICY

DEFAULT_CASES = Path(__file__).resolve().parents[3] / "shared" / "traces" / "semantic_router" / "cache_cases.json"
EMBEDDERS = ("minilm", "hashing", "none")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    policy = commands.add_parser("policy", help="check, explain and evaluate routing policies (YAML)")
    policy.set_defaults(func=lambda _args: policy.print_help() or 2)
    sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")

    check = sub.add_parser(
        "check",
        help="validate a policy file against a fleet and report conflicts",
        description="Validate a policy file (schema, names, dead or overlapping rules, SLOs the GPUs cannot meet). "
        "Prints one finding per line with its YAML path and line; exits 1 when there is any error.",
    )
    check.add_argument("file", type=Path, help="the policy YAML")
    check.add_argument("--fleet", type=Path, help="fleet file to check pool names against (default: the policy's own pools)")
    check.set_defaults(func=_check)

    explain = sub.add_parser(
        "explain",
        help="show how a policy routes one request",
        description="Classify one request body (OpenAI chat or completions JSON) and print its workload profile, "
        "the rule that matched and why, the rules skipped before it, the target pools and the SLO.",
    )
    explain.add_argument("file", type=Path, help="the policy YAML")
    explain.add_argument("--request", type=Path, required=True, help="JSON request body; chat when it has 'messages'")
    explain.add_argument("--fleet", type=Path, help="fleet file (default: the policy's own pools)")
    explain.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="request header, e.g. x-session-id=abc")
    explain.add_argument("--embedder", choices=EMBEDDERS, default="minilm", help="embedder for exemplar topics (default: minilm)")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.set_defaults(func=_explain)

    topics = sub.add_parser(
        "eval-topics",
        help="topic accuracy of a policy on labelled questions",
        description="Classify every question of a labelled file as the gateway would (the policy's keywords, exemplars "
        "and topics head) and print the accuracy with its 95% confidence interval, per-class precision and recall, the "
        "confusion table and the share sent to 'other'. FILE: a JSON list of {category, question}, the Semantic "
        "Router's cache cases, or its MMLU-Pro labels file. A label that is a topics domain is compared through the "
        "policy's topics.map; without topics, 'other' means the policy's default category.",
    )
    topics.add_argument("cases", type=Path, nargs="?", default=DEFAULT_CASES, metavar="FILE", help=f"labelled questions (default: {DEFAULT_CASES})")
    topics.add_argument("--policy", type=Path, default=BUILTIN_POLICY, help="policy YAML (default: the built-in policy)")
    topics.add_argument("--embedder", choices=EMBEDDERS, default="minilm",
                        help="embedder (default: minilm, the real model; none: keywords alone)")
    topics.add_argument("--json", action="store_true", help="print one JSON object (accuracy, accuracy_ci95, classes, confusion, other_share)")
    topics.set_defaults(func=_eval_topics)

    train = sub.add_parser(
        "train-topics",
        help="train the MMLU-Pro topic head (policies/data/topic_head.json)",
        description="Fit the topic head on the MMLU-Pro exemplars and the questions written for this project, choose "
        "its keyword boost, temperature and abstention floor by 5-fold cross-validation, and write it. Prints the "
        "cross-validated accuracy. The held-out questions are never read.",
    )
    from fleetgate.policies import topics_train

    topics_train.add_arguments(train)
    train.set_defaults(func=topics_train.run)

    classify = bench.add_parser(
        "classify",
        help="per-request classification latency (p50/p99) and the embedding cost",
        description="Times WorkloadClassifier on a mix of requests (short chat, multi-turn, agent with tools, "
        "long document): signals only (the baseline), with keyword topics, and the nearest-exemplar embedding "
        "with the real model. Prints the median over runs.",
    )
    classify.add_argument("--policy", type=Path, default=BUILTIN_POLICY, help="policy whose categories are used")
    classify.add_argument("--requests", type=int, default=4000, help="classifications per run (default 4000)")
    classify.add_argument("--runs", type=int, default=5, help="runs; the median is printed (default 5)")
    classify.add_argument("--embeddings", type=int, default=100, help="single-text embeddings timed (0 skips the model)")
    classify.set_defaults(func=_bench_classify)


def _embedder(name: str):  # noqa: ANN202 - returns an Embedder or None; imports the model lazily
    if name == "none":
        return None
    from fleetgate.cache.embed import HashingEmbedder, SentenceTransformerEmbedder

    return SentenceTransformerEmbedder() if name == "minilm" else HashingEmbedder()


def _check(args: argparse.Namespace) -> int:
    from fleetgate.policies.conflicts import errors
    from fleetgate.policies.load import check_file

    _, findings = check_file(args.file, fleet_path=args.fleet)
    for finding in findings:
        print(finding)
    n_errors = len(errors(findings))
    print(f"{args.file}: {n_errors} error(s), {len(findings) - n_errors} warning(s)")
    return 1 if n_errors else 0


def _explain(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from fleetgate.core.errors import GatewayError
    from fleetgate.policies.load import check_file, config_error
    from fleetgate.policies.planner import CompiledPolicy, PolicyPlanner
    from fleetgate.router.ingress import parse_inference_request

    loaded, findings = check_file(args.file, fleet_path=args.fleet)
    if loaded is None:
        print(config_error(str(args.file), findings))
        return 1
    raw = args.request.read_bytes()
    headers = dict(h.split("=", 1) for h in args.header)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        print(f"{args.request} is not JSON: {exc}")
        return 1
    api = "chat" if isinstance(body, dict) and "messages" in body else "completions"
    try:
        request = parse_inference_request(raw, api, request_id="explain", arrival_s=0.0, headers=headers)
        planner = PolicyPlanner(CompiledPolicy.build(loaded, _embedder(args.embedder)))
        explanation = asyncio.run(planner.explain(request))
    except GatewayError as exc:
        print(f"request rejected ({exc.status}): {exc.message}")
        return 1
    if args.json:
        print(json.dumps(explanation, indent=2))
        return 0
    print(_format_explanation(explanation))
    return 0


def _format_explanation(e: dict) -> str:
    p = e["profile"]
    lines = [
        f"policy: {e['policy']}",
        "profile:",
        f"  api={p['api']} model={p['model']} tenant={p['tenant']}",
        f"  prompt_tokens={p['prompt_tokens']} output_tokens={p['output_tokens']}"
        f"{'' if p['output_tokens_requested'] else ' (expected default)'} shape={p['shape']} context_class={p['context_class']}",
        f"  turns={p['turns']} multi_turn={p['multi_turn']} agentic={p['agentic']} session_id={p['session_id']}",
        f"  category={p['category']} ({p['category_source']}, score {p['category_score']:.2f})"
        + "".join(f"; #{i + 1} {t['category']} {t['score']:.2f}" for i, t in enumerate(e.get("top_categories", []))),
    ]
    for skipped in e["skipped_rules"]:
        lines.append(f"skipped rule {skipped['rule']}: {skipped['reason']}")
    where = "defaults (no rule matched)" if e["rule_index"] is None else f"rules[{e['rule_index']}]"
    lines.append(f"matched rule: {e['rule']} = {where}, because {', '.join(e['matched_because'])}")
    lines.append(f"pools (preference order): {', '.join(e['pools']) or '(none)'}")
    for dropped in e["dropped_pools"]:
        lines.append(f"  dropped {dropped['pool']}: {dropped['reason']}")
    slo = lambda ms: "none" if ms is None else f"{ms:g} ms"  # noqa: E731
    lines.append(f"router: {e['router']['name']} {e['router']['params'] or ''}".rstrip())
    lines.append(f"SLO: ttft {slo(e['ttft_slo_ms'])}, tpot {slo(e['tpot_slo_ms'])}; priority {e['priority']}")
    lines.append(f"cache policy: {e['cache_policy'] or 'off'}; affinity key blocks: {e['key_blocks']}")
    return "\n".join(lines)


def _eval_topics(args: argparse.Namespace) -> int:
    import json

    from fleetgate.policies.load import check_file, config_error
    from fleetgate.policies.topic_eval import evaluate, read_labelled

    loaded, findings = check_file(args.policy)
    if loaded is None:
        print(config_error(str(args.policy), findings))
        return 1
    try:
        questions = read_labelled(args.cases)
    except (OSError, ValueError) as exc:
        print(f"cannot read labelled questions: {exc}")
        return 1
    result = evaluate(loaded, _embedder(args.embedder), questions)
    if args.json:
        print(json.dumps({"policy": str(args.policy), "cases": str(args.cases), "embedder": args.embedder, **result.to_json()}))
        return 0
    print(f"policy: {args.policy}  cases: {args.cases}  embedder: {args.embedder}")
    print(result.format())
    return 0


def _bench_classify(args: argparse.Namespace) -> int:
    from fleetgate.policies.bench import run_classify_bench

    print(run_classify_bench(args.policy, requests=args.requests, runs=args.runs, embeddings=args.embeddings))
    return 0
