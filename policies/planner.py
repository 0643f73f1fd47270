"""The YAML-policy planner: classify a request, take the first matching rule, produce a RoutePlan.

A `CompiledPolicy` is everything the request path needs, built once per load (keyword patterns,
exemplar embeddings, frozen rule matchers). `PolicyPlanner` holds one and swaps it with a single
attribute assignment, so each request sees exactly one policy, old or new, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from fleetgate.cache.embed import AsyncBatchingEmbedder, Embedder
from fleetgate.cache.policy import CachePolicy
from fleetgate.core.errors import ModelNotFoundError
from fleetgate.core.plan import RoutePlan
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest
from fleetgate.policies.classify import (
    TopicCategory,
    TopicClassifier,
    WorkloadClassifier,
)
from fleetgate.policies.load import LoadedPolicy
from fleetgate.policies.matcher import CompiledMatch
from fleetgate.policies.schema import (
    CACHE_FROM_CATEGORY,
    CACHE_OFF,
    Category,
    Policy,
    RouterSpec,
)
from fleetgate.policies.topics import TopicMapping
from fleetgate.pools.model import Pool

log = logging.getLogger("fleetgate.policies")

DEFAULTS_RULE = "defaults"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int | None  # position in `rules:`; None for the defaults
    name: str
    match: CompiledMatch
    pools: tuple[str, ...]  # empty (defaults only): every pool serving the model
    models: frozenset[str] | None  # models its pools serve; None when no fleet is known
    ttft_slo_s: float | None
    tpot_slo_s: float | None
    priority: int
    cache: str
    router: RouterSpec
    key_blocks: int | None


def _ms_to_s(value_ms: float | None) -> float | None:
    return None if value_ms is None else value_ms / 1000.0


def topic_classifier(loaded: LoadedPolicy, embedder: Embedder | None) -> TopicClassifier:
    """The policy's categories (keywords, exemplars) and, with a `topics:` section, its mapped head."""
    policy = loaded.policy
    head = None
    if loaded.topics is not None and policy.topics is not None:
        head = TopicMapping.of(loaded.topics, policy.topics.map, policy.topics.min_confidence)
    return TopicClassifier(
        [TopicCategory(c.name, tuple(c.keywords), tuple(c.exemplars)) for c in policy.categories],
        embedder,
        min_similarity=policy.topic.min_similarity,
        default_category=policy.topic.default_category,
        head=head,
    )


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A loaded policy made ready for the request path."""

    loaded: LoadedPolicy
    classifier: WorkloadClassifier
    rules: tuple[CompiledRule, ...]
    fallback: CompiledRule
    models: frozenset[str] | None  # every model some pool serves; None when no fleet is known
    categories: Mapping[str, Category]

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @property
    def pools(self) -> Mapping[str, Pool] | None:
        return self.loaded.pools

    @classmethod
    def build(cls, loaded: LoadedPolicy, embedder: Embedder | None = None) -> "CompiledPolicy":
        """Compile `loaded`; with an embedder, its exemplars are embedded now (one batch)."""
        policy, pools = loaded.policy, loaded.pools
        topics = topic_classifier(loaded, embedder)
        defaults = policy.defaults

        def served(names: list[str]) -> frozenset[str] | None:
            return None if pools is None else frozenset(pools[n].model for n in names if n in pools)

        rules = tuple(
            CompiledRule(
                index=index,
                name=rule.name,
                match=CompiledMatch.from_match(rule.match),
                pools=tuple(rule.pools),
                models=served(rule.pools) if rule.pools else None,
                ttft_slo_s=_ms_to_s(rule.ttft_slo_ms or defaults.ttft_slo_ms),
                tpot_slo_s=_ms_to_s(rule.tpot_slo_ms or defaults.tpot_slo_ms),
                priority=defaults.priority if rule.priority is None else rule.priority,
                cache=rule.cache or defaults.cache,
                router=rule.router or defaults.router,
                key_blocks=rule.key_blocks,
            )
            for index, rule in enumerate(policy.rules)
        )
        fallback = CompiledRule(
            index=None,
            name=DEFAULTS_RULE,
            match=CompiledMatch(),
            pools=tuple(defaults.pools),
            models=served(defaults.pools) if defaults.pools else None,
            ttft_slo_s=_ms_to_s(defaults.ttft_slo_ms),
            tpot_slo_s=_ms_to_s(defaults.tpot_slo_ms),
            priority=defaults.priority,
            cache=defaults.cache,
            router=defaults.router,
            key_blocks=None,
        )
        models = None if pools is None else frozenset(p.model for p in pools.values())
        categories = MappingProxyType({c.name: c for c in policy.categories})
        return cls(loaded, WorkloadClassifier(policy.classifier, topics), rules, fallback, models, categories)

    # ------------------------------------------------------------ decisions

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(f"The model `{model}` does not exist. Models served here: {known}.", param="model")

    def select(self, profile: WorkloadProfile) -> CompiledRule:
        for rule in self.rules:
            if (rule.models is None or profile.model in rule.models) and rule.match.matches(profile):
                return rule
        return self.fallback

    def target_pools(self, rule: CompiledRule, profile: WorkloadProfile) -> tuple[tuple[str, ...], list[dict[str, str]]]:
        """The rule's pools that serve the model and can hold the prompt, and why others were dropped.

        When no pool can hold the prompt the model's pools are kept: the backend then rejects the
        request with its own context-length error, which is clearer than a routing failure.
        """
        pools = self.pools
        names = rule.pools or (tuple(p.name for p in pools.values() if p.model == profile.model) if pools else ())
        if pools is None:
            return names, []
        dropped: list[dict[str, str]] = []
        serving = []
        for name in names:
            pool = pools.get(name)
            if pool is None or pool.model != profile.model:
                dropped.append({"pool": name, "reason": f"does not serve {profile.model}"})
            else:
                serving.append(name)
        fitting = [n for n in serving if pools[n].max_context_tokens >= profile.prompt_tokens]
        if fitting:
            dropped += [
                {"pool": n, "reason": f"holds {pools[n].max_context_tokens} tokens < prompt {profile.prompt_tokens}"}
                for n in serving
                if n not in fitting
            ]
            serving = fitting
        return tuple(serving), dropped

    def cache_policy_name(self, rule: CompiledRule, profile: WorkloadProfile) -> str | None:
        """The category whose cache policy applies, or None when the cache is bypassed."""
        if rule.cache == CACHE_OFF:
            return None
        name = profile.category if rule.cache == CACHE_FROM_CATEGORY else rule.cache
        policy = self.cache_policy(name)
        return name if policy is not None and policy.enabled else None

    @property
    def cache_policies(self) -> Mapping[str, CachePolicy]:
        """Category name -> its cache policy: what fleetgate.cache.semantic.SemanticCache is built with."""
        return MappingProxyType({name: c.cache for name, c in self.categories.items()})

    def cache_policy(self, name: str) -> CachePolicy | None:
        category = self.categories.get(name)
        return None if category is None else category.cache

    def key_blocks(self, rule: CompiledRule, profile: WorkloadProfile) -> int:
        if rule.key_blocks is not None:
            return rule.key_blocks
        category = self.categories.get(profile.category)
        if category is not None and category.key_blocks is not None:
            return category.key_blocks
        return self.policy.defaults.key_blocks

    def route_plan(self, profile: WorkloadProfile) -> RoutePlan:
        rule = self.select(profile)
        pools, _ = self.target_pools(rule, profile)
        return RoutePlan(
            pools=pools,
            router=rule.router.name,
            rule=rule.name,
            profile=profile,
            ttft_slo_s=rule.ttft_slo_s,
            tpot_slo_s=rule.tpot_slo_s,
            priority=rule.priority,
            cache_policy=self.cache_policy_name(rule, profile),
            key_blocks=self.key_blocks(rule, profile),
            router_params=rule.router.frozen_params(),
            pools_ranked=bool(rule.pools),  # no pools named: any serving pool, whichever is fastest
        )

    def explain_profile(self, profile: WorkloadProfile) -> dict[str, Any]:
        """Why `profile` gets its plan: every rule tried before the match and what failed."""
        skipped = []
        for rule in self.rules:
            if rule.models is not None and profile.model not in rule.models:
                skipped.append({"rule": rule.name, "reason": f"its pools do not serve model {profile.model!r}"})
                continue
            failure = rule.match.first_failure(profile)
            if failure is None:
                break
            skipped.append({"rule": rule.name, "reason": failure})
        rule = self.select(profile)
        plan = self.route_plan(profile)
        _, dropped = self.target_pools(rule, profile)
        profile_dict = asdict(profile)
        profile_dict.update(multi_turn=profile.multi_turn, has_session=profile.has_session)
        return {
            "policy": self.loaded.source,
            "profile": profile_dict,
            "top_categories": [{"category": c, "score": score} for c, score in profile.category_candidates],
            "rule": rule.name,
            "rule_index": rule.index,
            "matched_because": rule.match.describe() or ["no conditions (matches every request)"],
            "skipped_rules": skipped,
            "pools": list(plan.pools),
            "dropped_pools": dropped,
            "router": {"name": rule.router.name, "params": dict(rule.router.params)},
            "ttft_slo_ms": None if plan.ttft_slo_s is None else plan.ttft_slo_s * 1000,
            "tpot_slo_ms": None if plan.tpot_slo_s is None else plan.tpot_slo_s * 1000,
            "priority": plan.priority,
            "cache_policy": plan.cache_policy,
            "key_blocks": plan.key_blocks,
        }


class PolicyPlanner:
    """fleetgate.core.plan.Planner over a YAML policy, hot-swappable (see policies/reload.py)."""

    def __init__(self, compiled: CompiledPolicy, embedder: AsyncBatchingEmbedder | None = None) -> None:
        self._compiled = compiled
        self._embedder = embedder  # embeds request text for nearest-exemplar topics, off the loop
        self._swap_listeners: list[Callable[[CompiledPolicy], None]] = []

    def on_swap(self, listener: Callable[[CompiledPolicy], None]) -> None:
        """Call `listener` with each new policy, e.g. to hand its cache policies to the semantic cache."""
        self._swap_listeners.append(listener)

    @property
    def compiled(self) -> CompiledPolicy:
        return self._compiled

    def swap(self, compiled: CompiledPolicy) -> None:
        """Serve `compiled` from the next request on (one reference assignment: atomic)."""
        self._compiled = compiled
        for listener in self._swap_listeners:
            listener(compiled)
        log.info("policy %s in effect (%d rules)", compiled.loaded.source, len(compiled.rules))

    async def profile(self, request: InferenceRequest, compiled: CompiledPolicy) -> WorkloadProfile:
        classifier = compiled.classifier
        topic = None
        if classifier.topics is not None:
            text = classifier.topic_text(request)
            topic = classifier.topics.without_embedding(text)
            if topic is None:
                topic = (
                    classifier.topics.nearest(await self._embedder.embed_one(text), text)
                    if self._embedder is not None
                    else await asyncio.to_thread(classifier.topics.classify, text)
                )
        return classifier.classify(request, topic)

    async def plan(self, request: InferenceRequest) -> RoutePlan:
        compiled = self._compiled  # one policy for the whole request, even across a swap
        compiled.check_model(request.model)
        return compiled.route_plan(await self.profile(request, compiled))

    async def explain(self, request: InferenceRequest) -> dict[str, Any]:
        """The admin endpoint's and `policy explain`'s answer: profile, rule and why, pools, SLO."""
        compiled = self._compiled
        compiled.check_model(request.model)
        return compiled.explain_profile(await self.profile(request, compiled))
