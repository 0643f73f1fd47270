"""The policy YAML as pydantic v2 models: structure, types and ranges (extra fields forbidden).

This module only says what a well-formed file looks like. Whether its names resolve (pools,
models, categories, routers) and whether its rules make sense together is policies/conflicts.py,
which can point at the exact YAML path of each problem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from fleetgate.cache.policy import CachePolicy
from fleetgate.core.defaults import DEFAULT_KEY_BLOCKS
from fleetgate.core.profile import ContextClass, WorkloadShape
from fleetgate.policies.classify import ClassifierConfig
from fleetgate.pools.config import PoolConfig

POLICY_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
CACHE_FROM_CATEGORY = "category"
CACHE_OFF = "off"

T = TypeVar("T")


def _as_list(value: Any) -> Any:
    """Let operators write `api: chat` for `api: [chat]`."""
    return [value] if isinstance(value, (str, int, float, bool)) else value


OneOrMany = Annotated[list[T], BeforeValidator(_as_list), Field(min_length=1)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Category(_Strict):
    """A topic: keywords (whole words, any case) are tried first, in category order; then exemplars."""

    name: Name
    description: str | None = None
    keywords: list[Annotated[str, Field(min_length=1)]] = []
    exemplars: list[Annotated[str, Field(min_length=1)]] = []
    key_blocks: int | None = Field(default=None, ge=1)  # DualMap affinity key length for this topic
    cache: CachePolicy = CachePolicy()


class TopicSettings(_Strict):
    default_category: Name = "general"  # when no keyword hits and no exemplar is close enough
    min_similarity: float = Field(default=0.35, ge=-1, le=1)  # cosine needed for an exemplar match


class Topics(_Strict):
    """A topics fragment (its domains and trained head, policies/topics.py) and how its domains map onto categories."""

    fragment: str = "mmlu-pro"  # a built-in fragment's name, or a YAML path relative to this policy
    map: dict[str, Name] = {}  # domain -> category; a domain not listed is a category of its own name
    min_confidence: float | None = Field(default=None, ge=0, le=1)  # None: the head's calibrated floor


Scalar = str | int | float | bool | None


class RouterSpec(_Strict):
    """A routing algorithm of router/routing/registry.py and its constructor's keyword arguments."""

    name: str
    params: dict[str, Scalar | list[Scalar]] = {}

    def frozen_params(self) -> tuple[tuple[str, Any], ...]:
        """Sorted (name, value) pairs with lists as tuples: hashable, so the gateway can key routers on them."""
        return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.params.items()))


def _router_shorthand(value: Any) -> Any:
    """`router: dualmap` is short for `router: {name: dualmap}`."""
    return {"name": value} if isinstance(value, str) else value


RouterField = Annotated[RouterSpec, BeforeValidator(_router_shorthand)]


class Match(_Strict):
    """Conditions on the request's WorkloadProfile; all given ones must hold (empty: everything)."""

    api: OneOrMany[Literal["chat", "completions"]] | None = None
    agentic: bool | None = None
    multi_turn: bool | None = None
    has_session: bool | None = None
    shape: OneOrMany[WorkloadShape] | None = None
    context_class: OneOrMany[ContextClass] | None = None
    prompt_tokens_min: int | None = Field(default=None, ge=0)  # inclusive
    prompt_tokens_max: int | None = Field(default=None, ge=0)  # inclusive
    category: OneOrMany[str] | None = None
    model: OneOrMany[str] | None = None
    tenant: OneOrMany[str] | None = None

    @model_validator(mode="after")
    def _range_not_empty(self) -> "Match":
        if self.prompt_tokens_min is not None and self.prompt_tokens_max is not None:
            if self.prompt_tokens_min > self.prompt_tokens_max:
                raise ValueError("prompt_tokens_min is above prompt_tokens_max: the rule can never match")
        return self


class Rule(_Strict):
    """First matching rule wins: where its traffic goes, under which SLO and cache policy."""

    name: Name
    description: str | None = None
    match: Match = Match()
    pools: list[str] = []  # preference order, later ones are fallbacks; empty: every pool serving the model
    ttft_slo_ms: float | None = Field(default=None, gt=0)  # None: the defaults' SLO
    tpot_slo_ms: float | None = Field(default=None, gt=0)
    priority: int | None = None
    cache: str | None = None  # "category" (the request's category policy), "off", or a category name
    router: RouterField | None = None
    key_blocks: int | None = Field(default=None, ge=1)  # overrides the category's key_blocks


class Defaults(_Strict):
    """What a rule leaves unsaid, and the plan for requests no rule matches."""

    pools: list[str] = []  # no rule matched: these pools; empty: every pool serving the model
    ttft_slo_ms: float | None = Field(default=None, gt=0)
    tpot_slo_ms: float | None = Field(default=None, gt=0)
    priority: int = 0
    cache: str = CACHE_FROM_CATEGORY
    router: RouterField = RouterSpec(name="dualmap")
    key_blocks: int = Field(default=DEFAULT_KEY_BLOCKS, ge=1)


class Policy(_Strict):
    """A whole policy file."""

    version: Literal[1]
    description: str | None = None
    fleet: str | None = None  # path of a fleet file (relative to this file) defining the pools
    pools: list[PoolConfig] | None = None  # or the pools inline, in the fleet file's format
    classifier: ClassifierConfig = ClassifierConfig()
    topic: TopicSettings = TopicSettings()
    topics: Topics | None = None  # the trained topic head; None: keywords and exemplars only
    categories: list[Category] = []
    rules: list[Rule] = []
    defaults: Defaults = Defaults()

    @model_validator(mode="after")
    def _one_source_of_pools(self) -> "Policy":
        if self.fleet is not None and self.pools is not None:
            raise ValueError("give either `fleet` (a fleet file) or `pools` (inline), not both")
        return self
