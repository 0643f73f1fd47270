"""Custom GPU profiles: a fleet file's `gpus:` section, and checking the GPU names pools use.

    gpus:
      h200:
        prefill_tokens_per_s: 45000
        step_overhead_s: 0.0035
        decode_per_seq_s: 0.00003
        decode_per_context_token_s: 28.0e-9
        kv_cache_tokens: 900000
        max_model_len: 65536      # optional, as are max_num_seqs and max_num_batched_tokens
    pools:
      - {name: big, model: llama-3.1-8b, gpu: h200, count: 2, base_port: 8101}

The fields are `GpuProfile`'s (pools/profiles.py explains the step-time model). A pool or instance
names a built-in profile (h100, a100, l4) or one of the file's own; a custom name may not shadow
a built-in one, so `gpu: h100` means the same in every fleet file.

Why a context variable: a pool's `gpu` is checked where it is written (so the error names
`pools[1].gpu`, and a policy file's inline pools, which have no `gpus:`, are checked the same
way), but which names are valid depends on the `gpus:` of the file being read. `FleetConfig`
sets the names for the span of its own validation (`custom_gpu_names`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from fleetgate.pools.profiles import PROFILES, GpuProfile

GPU_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

_custom_names: ContextVar[frozenset[str]] = ContextVar("fleetgate_custom_gpus", default=frozenset())


class GpuProfileConfig(BaseModel):
    """One custom profile; see GpuProfile for what each figure means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_tokens_per_s: float = Field(gt=0)
    step_overhead_s: float = Field(gt=0)
    decode_per_seq_s: float = Field(ge=0)
    decode_per_context_token_s: float = Field(ge=0)
    kv_cache_tokens: int = Field(ge=16)
    max_num_seqs: int = Field(default=256, gt=0)
    max_num_batched_tokens: int = Field(default=8192, gt=0)
    max_model_len: int = Field(default=32768, gt=0)

    def to_profile(self, name: str) -> GpuProfile:
        return GpuProfile(name=name, **self.model_dump())

    @classmethod
    def from_profile(cls, profile: GpuProfile) -> "GpuProfileConfig":
        return cls(**{f: getattr(profile, f) for f in cls.model_fields})


@contextlib.contextmanager
def custom_gpu_names(names: Iterable[str]) -> Iterator[None]:
    """Within the block, `known_gpu` also accepts `names` (a fleet file's `gpus:`)."""
    token = _custom_names.set(frozenset(str(n).lower() for n in names))
    try:
        yield
    finally:
        _custom_names.reset(token)


def known_gpu(name: str) -> str:
    """`name` lower-cased if it is a built-in profile or a custom one in scope; else a ValueError
    listing the known ones."""
    key = name.lower()
    custom = _custom_names.get()
    if key not in PROFILES and key not in custom:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(sorted({*PROFILES, *custom}))}")
    return key


def not_built_in(name: str) -> str:
    """A custom profile's name: lower case, and not one of the built-in names."""
    if name in PROFILES:
        raise ValueError(f"{name!r} is a built-in GPU profile; give the custom one another name")
    return name
