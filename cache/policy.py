"""One category's cache policy (the policy YAML's `categories[].cache`): owned here, where it is
enforced; policies/schema.py embeds it in the policy file's schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheableConditions(_StrictModel):
    """Which requests of a category may be answered from (and stored in) the semantic cache."""

    max_temperature: float | None = Field(default=0.7, ge=0)  # None: any temperature
    tools: bool = False  # requests declaring tools are usually not safe to replay
    max_n: int = Field(default=1, ge=1)


class AdaptiveBounds(_StrictModel):
    """How far the cache may relax when the target pool is over its SLO (load-adaptive policy).

    Only the similarity threshold and the TTL relax: the verifier's judgement never does, because a
    wrong answer served fast is still wrong.
    """

    min_threshold: float = Field(gt=0, le=1)  # the similarity threshold never drops below this
    max_ttl_s: float = Field(gt=0)  # TTLs never grow beyond this


class CachePolicy(_StrictModel):
    """Semantic-cache behaviour of one category (namespaced per tenant, model and category)."""

    enabled: bool = False
    threshold: float = Field(default=0.9, gt=0, le=1)  # cosine similarity a candidate needs (the verifier then judges it)
    verify: bool = True  # check every similarity candidate with the verifier (cache/verify.py) before serving it
    verifier_threshold: float | None = Field(default=None, ge=0, le=1)  # score needed; None: the shipped model's own
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)  # per namespace; the oldest entries go first
    cacheable: CacheableConditions = CacheableConditions()
    adaptive: AdaptiveBounds | None = None  # None: thresholds and TTLs never move

    @model_validator(mode="after")
    def _bounds_contain_the_base(self) -> "CachePolicy":
        if self.adaptive is not None:
            if self.adaptive.min_threshold > self.threshold:
                raise ValueError("adaptive.min_threshold must not exceed threshold (relaxing only lowers it)")
            if self.adaptive.max_ttl_s < self.ttl_s:
                raise ValueError("adaptive.max_ttl_s must not be below ttl_s (relaxing only lengthens it)")
        return self
