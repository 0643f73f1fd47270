"""What a policy means against a fleet: dangling names, dead and overlapping rules, impossible SLOs.

Each rule's `match:` is turned into a region of request space: finite sets for the enumerable
profile fields, a set of prompt-token intervals (context classes intersected with the explicit
bounds), and sets or "anything" for the open fields (tenant; model when no fleet is known). The
region of a rule also includes the models its pools serve, since a rule never applies to a model
none of its pools serve. Rules are then compared region by region:

- shadowed (error): an earlier rule's region contains this rule's region, so it can never match.
- overlap (warning): two rules' regions intersect, neither contains the other, and they send
  traffic to different pools: the overlap silently goes to the earlier one. An earlier, narrower
  rule inside a later, broader one is the usual "specific first, general last" and is not reported.
- unknown pools, models, categories, cache policies and routers (errors).
- SLOs (error for a rule's first pool, warning for fallbacks): the pool's GPU profile cannot prefill
  the rule's largest prompt within its TTFT SLO even with an empty queue.

Union shadowing (a rule covered by several earlier rules together) is not detected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Mapping

from fleetgate.core.profile import CONTEXT_CLASSES, SHAPES
from fleetgate.policies.classify import ClassifierConfig
from fleetgate.policies.schema import (
    CACHE_FROM_CATEGORY,
    CACHE_OFF,
    Policy,
    RouterSpec,
    Rule,
)
from fleetgate.pools.model import Pool
from fleetgate.router.routing.registry import ROUTER_NAMES, make_router

Severity = Literal["error", "warning"]
UNBOUNDED_TOKENS = 10**12
Intervals = tuple[tuple[int, int], ...]



@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    path: str  # YAML path, e.g. rules[2].pools[0]
    message: str
    line: int | None = None  # 1-based line in the policy file, when known

    def __str__(self) -> str:
        where = f"{self.path or '<root>'}" + (f" (line {self.line})" if self.line else "")
        return f"{self.severity}: {where}: {self.message}"


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


# ---------------------------------------------------------------- regions of request space


@dataclass(frozen=True, slots=True)
class Region:
    """The requests a rule can match; `None` in an open dimension means "anything"."""

    api: frozenset[str]
    agentic: frozenset[bool]
    multi_turn: frozenset[bool]
    has_session: frozenset[bool]
    shape: frozenset[str]
    category: frozenset[str]
    prompt_tokens: Intervals
    model: frozenset[str] | None
    tenant: frozenset[str] | None

    @property
    def empty(self) -> bool:
        finite = (self.api, self.agentic, self.multi_turn, self.has_session, self.shape, self.category)
        return any(not s for s in finite) or not self.prompt_tokens or self.model == frozenset() or self.tenant == frozenset()

    def contains(self, other: "Region") -> bool:
        return (
            other.api <= self.api
            and other.agentic <= self.agentic
            and other.multi_turn <= self.multi_turn
            and other.has_session <= self.has_session
            and other.shape <= self.shape
            and other.category <= self.category
            and _covers(self.prompt_tokens, other.prompt_tokens)
            and _open_contains(self.model, other.model)
            and _open_contains(self.tenant, other.tenant)
        )

    def intersect(self, other: "Region") -> "Region":
        return Region(
            api=self.api & other.api,
            agentic=self.agentic & other.agentic,
            multi_turn=self.multi_turn & other.multi_turn,
            has_session=self.has_session & other.has_session,
            shape=self.shape & other.shape,
            category=self.category & other.category,
            prompt_tokens=_intersect(self.prompt_tokens, other.prompt_tokens),
            model=_open_intersect(self.model, other.model),
            tenant=_open_intersect(self.tenant, other.tenant),
        )

    def describe(self, universe: "Region") -> str:
        """The dimensions where this region is narrower than `universe`, as `name=value`."""
        parts = []
        for name in ("api", "agentic", "multi_turn", "has_session", "shape", "category", "model", "tenant"):
            mine, everything = getattr(self, name), getattr(universe, name)
            if mine is not None and mine != everything:
                parts.append(f"{name}={'|'.join(sorted(str(v) for v in mine))}")
        if self.prompt_tokens != universe.prompt_tokens:
            parts.append("prompt_tokens=" + ",".join(f"{lo}..{'' if hi >= UNBOUNDED_TOKENS else hi}" for lo, hi in self.prompt_tokens))
        return ", ".join(parts) or "all requests"

    @property
    def max_prompt_tokens(self) -> int:
        return self.prompt_tokens[-1][1] if self.prompt_tokens else 0


def _open_contains(a: frozenset[str] | None, b: frozenset[str] | None) -> bool:
    return a is None or (b is not None and b <= a)


def _open_intersect(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    return a if b is None else a & b


def _merge(intervals: list[tuple[int, int]]) -> Intervals:
    """Sorted, disjoint, with touching intervals (hi + 1 == next lo) joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(i for i in intervals if i[0] <= i[1]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    return _merge([(max(lo1, lo2), min(hi1, hi2)) for lo1, hi1 in a for lo2, hi2 in b])


def _subtract(a: Intervals, b: Intervals) -> Intervals:
    """The integers of `a` not in `b`."""
    remaining = list(a)
    for lo2, hi2 in b:
        remaining = [
            piece
            for lo1, hi1 in remaining
            for piece in ((lo1, min(hi1, lo2 - 1)), (max(lo1, hi2 + 1), hi1))
            if piece[0] <= piece[1]
        ]
    return _merge(remaining)


def _covers(a: Intervals, b: Intervals) -> bool:
    return all(any(lo1 <= lo2 and hi2 <= hi1 for lo1, hi1 in a) for lo2, hi2 in b)


def class_intervals(config: ClassifierConfig) -> dict[str, tuple[int, int]]:
    """Prompt-token range of each context class under the classifier's thresholds."""
    return {
        "short": (0, config.short_max_tokens),
        "medium": (config.short_max_tokens + 1, config.medium_max_tokens),
        "long": (config.medium_max_tokens + 1, config.long_max_tokens),
        "very-long": (config.long_max_tokens + 1, UNBOUNDED_TOKENS),
    }


@dataclass(frozen=True, slots=True)
class _Context:
    policy: Policy
    pools: Mapping[str, Pool] | None
    categories: frozenset[str]  # declared, the default category and those the topics map domains onto
    domains: tuple[str, ...]  # the topics fragment's domains

    def served_models(self, pool_names: list[str]) -> frozenset[str] | None:
        """Models the named pools serve (no names: every pool); None when no fleet is known."""
        if self.pools is None:
            return None
        if not pool_names:
            return frozenset(p.model for p in self.pools.values())
        return frozenset(self.pools[p].model for p in pool_names if p in self.pools)

    def universe(self) -> Region:
        return Region(
            api=frozenset({"chat", "completions"}),
            agentic=frozenset({True, False}),
            multi_turn=frozenset({True, False}),
            has_session=frozenset({True, False}),
            shape=frozenset(SHAPES),
            category=self.categories,
            prompt_tokens=((0, UNBOUNDED_TOKENS),),
            model=None if self.pools is None else frozenset(p.model for p in self.pools.values()),
            tenant=None,
        )

    def region(self, rule: Rule) -> Region:
        match, everything = rule.match, self.universe()
        bounds = class_intervals(self.policy.classifier)
        classes = match.context_class or list(CONTEXT_CLASSES)
        explicit = ((match.prompt_tokens_min or 0, UNBOUNDED_TOKENS if match.prompt_tokens_max is None else match.prompt_tokens_max),)
        models = _open_intersect(self.served_models(rule.pools), frozenset(match.model) if match.model else None)
        # A completion is always a single turn: `multi_turn: true` excludes the completions API.
        api = frozenset(match.api) if match.api else everything.api
        if match.multi_turn is True:
            api -= {"completions"}

        def flags(value: bool | None) -> frozenset[bool]:
            return everything.agentic if value is None else frozenset({value})

        return Region(
            api=api,
            agentic=flags(match.agentic),
            multi_turn=flags(match.multi_turn),
            has_session=flags(match.has_session),
            shape=frozenset(match.shape) if match.shape else everything.shape,
            category=frozenset(match.category) & self.categories if match.category else everything.category,
            prompt_tokens=_intersect(_merge([bounds[c] for c in classes]), explicit),
            model=models,
            tenant=frozenset(match.tenant) if match.tenant else None,
        )


# ---------------------------------------------------------------- checks


def check_policy(policy: Policy, pools: Mapping[str, Pool] | None, domains: tuple[str, ...] = ()) -> list[Finding]:
    """Every finding about `policy` against `pools` (None: no fleet known, pool names unchecked) and
    the `domains` of its topics fragment (empty: no `topics:` section)."""
    categories = frozenset(c.name for c in policy.categories) | {policy.topic.default_category}
    categories |= topic_categories(policy, domains)
    context = _Context(policy, pools, categories, domains)
    findings: list[Finding] = []
    findings += _duplicate_names(policy)
    findings += _topics_findings(policy, domains)
    findings += _category_findings(policy, topic_categories(policy, domains))
    findings += _reference_findings(policy, context)
    rule_findings, effective = _analyse_rules(policy, context)
    findings += rule_findings
    findings += _slo_findings(policy, context, effective)
    return findings


def topic_categories(policy: Policy, domains: tuple[str, ...]) -> frozenset[str]:
    """The categories the topics section's domains land in (a domain not mapped keeps its name)."""
    mapping = policy.topics.map if policy.topics is not None else {}
    return frozenset(mapping.get(domain, domain) for domain in domains)


def _topics_findings(policy: Policy, domains: tuple[str, ...]) -> list[Finding]:
    if policy.topics is None:
        return []
    return [
        Finding("error", f"topics.map.{domain}", f"unknown domain {domain!r}; the fragment's domains: {', '.join(domains)}")
        for domain in policy.topics.map
        if domain not in domains
    ]


def _unknown_category(name: str, policy: Policy, context: _Context) -> str:
    if name in context.domains and policy.topics is not None:
        return f"{name!r} is a topics domain mapped onto category {policy.topics.map[name]!r}: match that category"
    kind = "category or domain" if context.domains else "category"
    return f"unknown {kind} {name!r}; known: {', '.join(sorted(context.categories))}"


def _duplicate_names(policy: Policy) -> list[Finding]:
    findings = []
    for section, items in (("categories", policy.categories), ("rules", policy.rules)):
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            if item.name in seen:
                findings.append(Finding("error", f"{section}[{index}].name", f"{item.name!r} is already the name of {section}[{seen[item.name]}]"))
            seen.setdefault(item.name, index)
    return findings


def _category_findings(policy: Policy, from_topics: frozenset[str]) -> list[Finding]:
    findings = []
    owner: dict[str, int] = {}
    for index, category in enumerate(policy.categories):
        assigned = category.keywords or category.exemplars or category.name in from_topics
        if not assigned and category.name != policy.topic.default_category:
            findings.append(Finding("warning", f"categories[{index}]", f"category {category.name!r} has no keywords or exemplars: no request is ever assigned to it"))
        for k, keyword in enumerate(category.keywords):
            earlier = owner.setdefault(keyword.lower(), index)
            if earlier != index:
                findings.append(Finding("warning", f"categories[{index}].keywords[{k}]", f"keyword {keyword!r} is already a keyword of categories[{earlier}] ({policy.categories[earlier].name}), which is tried first"))
    return findings


def _router_findings(path: str, spec: RouterSpec) -> list[Finding]:
    if spec.name not in ROUTER_NAMES:
        return [Finding("error", f"{path}.name", f"unknown router {spec.name!r}; known: {', '.join(ROUTER_NAMES)}")]
    try:
        make_router(spec.name, **spec.params)  # the gateway builds it the same way
    except ValueError as exc:
        return [Finding("error", f"{path}.params", str(exc))]
    return []


def _cache_findings(path: str, cache: str | None, categories: frozenset[str]) -> list[Finding]:
    if cache is None or cache in (CACHE_FROM_CATEGORY, CACHE_OFF) or cache in categories:
        return []
    return [Finding("error", path, f"unknown cache policy {cache!r}: use 'category', 'off' or a category name ({', '.join(sorted(categories))})")]


def _pool_findings(path: str, names: list[str], pools: Mapping[str, Pool] | None) -> list[Finding]:
    if pools is None:
        return []
    return [
        Finding("error", f"{path}[{index}]", f"unknown pool {name!r}; the fleet has: {', '.join(sorted(pools))}")
        for index, name in enumerate(names)
        if name not in pools
    ]


def _reference_findings(policy: Policy, context: _Context) -> list[Finding]:
    findings = []
    models = context.universe().model
    defaults = policy.defaults
    findings += _pool_findings("defaults.pools", defaults.pools, context.pools)
    findings += _router_findings("defaults.router", defaults.router)
    findings += _cache_findings("defaults.cache", defaults.cache, context.categories)
    for index, rule in enumerate(policy.rules):
        path = f"rules[{index}]"
        findings += _pool_findings(f"{path}.pools", rule.pools, context.pools)
        if rule.router is not None:
            findings += _router_findings(f"{path}.router", rule.router)
        findings += _cache_findings(f"{path}.cache", rule.cache, context.categories)
        for k, category in enumerate(rule.match.category or []):
            if category not in context.categories:
                findings.append(Finding("error", f"{path}.match.category[{k}]", _unknown_category(category, policy, context)))
        for k, model in enumerate(rule.match.model or []):
            if models is not None and model not in models:
                findings.append(Finding("error", f"{path}.match.model[{k}]", f"no pool serves model {model!r}; served: {', '.join(sorted(models))}"))
    return findings


def _analyse_rules(policy: Policy, context: _Context) -> tuple[list[Finding], list[Region | None]]:
    """Dead and overlapping rules, and each rule's effective region (None: it never matches).

    The effective region drops the prompt-token ranges that earlier rules take entirely (an earlier
    rule that, apart from prompt length, matches everything this one does). That finds rules
    covered by several earlier rules together when they split the prompt range, and keeps the
    SLO check to prompts a rule really receives. The defaults' region comes last.
    """
    findings: list[Finding] = []
    universe = context.universe()
    everything = universe.prompt_tokens
    catch_all = Rule(name="defaults", pools=policy.defaults.pools)
    effective: list[Region | None] = []
    live: list[int] = []  # rules that can match something
    for j, rule in enumerate([*policy.rules, catch_all]):
        is_default = j == len(policy.rules)
        path = f"rules[{j}]"
        region = universe if is_default else context.region(rule)
        if context.pools is not None and rule.pools and not any(p in context.pools for p in rule.pools):
            effective.append(None)  # every pool is unknown: already an error, and its region means nothing
            continue
        if region.empty:
            findings.append(Finding("error", f"{path}.match", f"rule {rule.name!r} can never match: {_why_empty(rule, region)}"))
            effective.append(None)
            continue
        shadow = next((i for i in live if regions_contain(effective[i], region)), None)
        takers = [i for i in live if replace(effective[i], prompt_tokens=everything).contains(replace(region, prompt_tokens=everything))]
        remaining = region.prompt_tokens
        for i in takers:
            remaining = _subtract(remaining, effective[i].prompt_tokens)
        if shadow is not None or not remaining:
            if not is_default:
                by = f"rules[{shadow}] ({policy.rules[shadow].name}) comes first and matches" if shadow is not None else (
                    " and ".join(f"rules[{i}] ({policy.rules[i].name})" for i in takers) + " come first and together match"
                )
                findings.append(Finding("error", f"{path}.match", f"rule {rule.name!r} can never match: {by} everything it would"))
            effective.append(None)
            continue
        region = replace(region, prompt_tokens=remaining)
        effective.append(region)
        if is_default:
            break
        for i in live:
            earlier, earlier_region = policy.rules[i], effective[i]
            overlap = earlier_region.intersect(region)
            if overlap.empty or region.contains(earlier_region) or earlier.pools == rule.pools:
                continue
            findings.append(Finding(
                "warning", f"{path}.match",
                f"overlaps rules[{i}] ({earlier.name}) on [{overlap.describe(universe)}]: that traffic goes to "
                f"{earlier.pools}, not {rule.pools}",
            ))
        live.append(j)
    return findings, effective


def regions_contain(outer: Region | None, inner: Region) -> bool:
    return outer is not None and outer.contains(inner)


def _why_empty(rule: Rule, region: Region) -> str:
    if not region.prompt_tokens:
        return "its context_class and prompt_tokens bounds do not overlap"
    if region.model == frozenset():
        return f"its pools {rule.pools} serve none of the models it matches"
    if not region.api:
        return "multi_turn: true never holds for the completions API"
    return "its conditions exclude every request"


def _prefill_s(pool: Pool, tokens: int) -> float:
    """Prefill time on the pool's slowest GPU, with an empty queue."""
    return max(e.profile.prefill_time_s(tokens) for e in pool.endpoints)


def _largest_prompt_within(pool: Pool, budget_s: float, upper: int) -> int:
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _prefill_s(pool, mid) <= budget_s else (lo, mid - 1)
    return lo


def _slo_findings(policy: Policy, context: _Context, effective: list[Region | None]) -> list[Finding]:
    if context.pools is None:
        return []
    findings = []
    catch_all = Rule(name="defaults", pools=policy.defaults.pools)
    targets = [(f"rules[{i}]", r) for i, r in enumerate(policy.rules)] + [("defaults", catch_all)]
    for (path, rule), region in zip(targets, effective):
        if region is None:
            continue
        slo_ms = rule.ttft_slo_ms or policy.defaults.ttft_slo_ms
        inherited = "" if rule.ttft_slo_ms else " (from defaults.ttft_slo_ms)"
        # No pools named: every pool may serve it, none is "the first", so findings are warnings.
        for index, name in enumerate(rule.pools or list(context.pools)):
            pool = context.pools.get(name)
            if pool is None or not pool.endpoints:
                continue
            pool_path = f"{path}.pools[{index}]" if rule.pools else path
            lower, upper = region.prompt_tokens[0][0], region.max_prompt_tokens
            if lower > pool.max_context_tokens:
                findings.append(Finding("warning", pool_path, f"pool {name!r} holds at most {pool.max_context_tokens} tokens: none of this rule's prompts ({lower} tokens and up) fit"))
                continue
            if pool.max_context_tokens < upper < UNBOUNDED_TOKENS:
                findings.append(Finding("warning", pool_path, f"pool {name!r} holds at most {pool.max_context_tokens} tokens but this rule matches prompts up to {upper}; longer prompts skip it"))
            upper = min(upper, pool.max_context_tokens)
            if slo_ms is None:
                continue
            needed_s = _prefill_s(pool, upper)
            if needed_s * 1000 > slo_ms:
                severity: Severity = "error" if index == 0 and rule.pools and path != "defaults" else "warning"
                fits = _largest_prompt_within(pool, slo_ms / 1000, upper)
                gpus = ",".join(sorted({e.gpu for e in pool.endpoints}))
                findings.append(Finding(
                    severity, f"{path}.ttft_slo_ms" if rule.ttft_slo_ms else pool_path,
                    f"pool {name!r} ({gpus}) needs {needed_s * 1000:.0f} ms to prefill {upper} prompt tokens with an empty "
                    f"queue, over the {slo_ms:g} ms TTFT SLO{inherited}; it meets it up to about {fits} tokens "
                    f"(bound the rule with prompt_tokens_max or context_class)",
                ))
    return findings
