"""Hot reload: watch the policy file and swap a new policy in only when it passes every check.

`poll()` looks at the file's mtime and size when `interval_s` has passed on the injected clock;
`reload_now()` (also the admin endpoint's action) loads, checks and compiles the file and swaps it
into the planner, or leaves the old policy serving and logs each error with its YAML path.
Compiling embeds exemplars, so both run in a worker thread when called from the event loop
(the poll loop and the admin reload in app/compose.py do that).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fleetgate.cache.embed import AsyncBatchingEmbedder, Embedder
from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.filewatch import ChangedFile
from fleetgate.policies.conflicts import Finding, errors
from fleetgate.policies.load import check_file, config_error
from fleetgate.policies.planner import CompiledPolicy, PolicyPlanner
from fleetgate.pools.model import Pool

log = logging.getLogger("fleetgate.policies")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where a policy comes from and what it is compiled against (the same on every reload)."""

    path: Path
    pools: Mapping[str, Pool] | None = None  # the gateway's fleet; None: the policy's own pools
    fleet_path: Path | None = None
    embedder: Embedder | None = None  # embeds the exemplars at compile time

    def compile(self) -> tuple[CompiledPolicy | None, list[Finding]]:
        loaded, findings = check_file(self.path, pools=self.pools, fleet_path=self.fleet_path)
        return (CompiledPolicy.build(loaded, self.embedder) if loaded is not None else None), findings


def build_planner(source: PolicySource, embedder: AsyncBatchingEmbedder | None = None) -> PolicyPlanner:
    """The planner for `source`, or ConfigError with the (yaml_path, message) of every error.

    `embedder` embeds request text for nearest-exemplar topics; the gateway passes the cache's
    batching embedder so topic and cache lookups share model batches.
    """
    compiled, findings = source.compile()
    if compiled is None:
        raise config_error(str(source.path), findings)
    for warning in findings:
        log.warning("policy %s: %s", source.path, warning)
    return PolicyPlanner(compiled, embedder)


class PolicyWatcher:
    def __init__(self, planner: PolicyPlanner, source: PolicySource, *, clock: Clock = monotonic_clock, interval_s: float) -> None:
        self.planner = planner
        self.source = source
        self._file = ChangedFile(source.path, interval_s=interval_s, clock=clock)
        self.reloads = 0  # successful swaps
        self.rejected = 0  # invalid files kept out
        self.last_problems: list[Finding] = []

    def reload_now(self) -> list[Finding]:
        """Load the file now; swap it in when valid. Returns its errors (empty: swapped in)."""
        self._file.read()
        try:
            compiled, findings = self.source.compile()
        except Exception as exc:  # e.g. the embedding model failed: the old policy keeps serving
            log.exception("policy %s: reload failed; keeping the current policy", self.source.path)
            compiled, findings = None, [Finding("error", "", f"reload failed: {exc}")]
        problems = errors(findings)
        self.last_problems = problems
        if compiled is None:
            self.rejected += 1
            for problem in problems:
                log.error("policy %s rejected, current policy kept: %s", self.source.path, problem)
            return problems
        for warning in findings:
            log.warning("policy %s: %s", self.source.path, warning)
        self.planner.swap(compiled)
        self.reloads += 1
        return []

    def poll(self) -> list[Finding] | None:
        """Reload if the interval has passed and the file changed; None when nothing was done."""
        return self.reload_now() if self._file.changed() else None
