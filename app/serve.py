"""Ray Serve front tier: the gateway's ASGI app as an ingress deployment (the only Ray code here).

Each replica builds its own runtime (aiohttp session, fleet refresh task, routers) from the same
settings, so replicas share nothing on the request path: DualMap's candidate pair is a pure
function of the prompt and the pool, and load is read from each replica's own scrape.

`serve run deploy/serve.yaml` uses `build_app`; `fleetgate serve` starts a small local Ray and
calls the same builder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from typing import Any, Callable

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from fleetgate.app.compose import build_asgi_app
from fleetgate.app.embedder_deployment import RemoteEmbedder, embedder_deployment
from fleetgate.app.fate import claim_port, fate_shared
from fleetgate.app.replica_header import ReplicaHeader
from fleetgate.app.settings import LOOPBACK, GatewaySettings, ServeSettings

log = logging.getLogger("fleetgate.serve")


@serve.ingress()
class GatewayIngress:
    """One gateway replica; the app (and its lifespan) is built on the replica itself."""

    def __init__(self, settings: dict[str, Any], embedder: DeploymentHandle | None = None) -> None:
        self._settings = GatewaySettings(**settings)
        self._embedder = embedder

    async def __serve_build_asgi_app__(self) -> Any:
        # Behind Ray's HAProxy a request's peer is HAProxy, not the client (no X-Forwarded-For either).
        embedder = (RemoteEmbedder(self._embedder.options(_prefer_local_routing=True), asyncio.get_running_loop())
                    if self._embedder else None)
        # Built in a thread: compiling the policy embeds its exemplars, a blocking call to the embedder.
        app = await asyncio.to_thread(build_asgi_app, self._settings, embedder=embedder,
                                      client_address_known=os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1")
        app.add_middleware(ReplicaHeader)
        return app


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder (`import_path: fleetgate.app.serve:build_app` in serve.yaml)."""
    serve_args = ServeSettings(**args)
    autoscaling = serve_args.autoscaling_config()  # replicas: a fixed number, or autoscaled from that many
    replicas: dict[str, Any] = ({"autoscaling_config": autoscaling} if autoscaling
                                else {"num_replicas": serve_args.num_replicas})
    deployment = serve.deployment(
        GatewayIngress,
        name="fleetgate",
        **replicas,
        max_ongoing_requests=serve_args.max_ongoing_requests,
        graceful_shutdown_timeout_s=serve_args.graceful_shutdown_timeout_s,
        ray_actor_options={"num_cpus": 0},
    )
    settings = serve_args.narrowed(GatewaySettings).model_dump()
    if serve_args.policy and serve_args.shared_embedder:  # without a policy nothing is ever embedded
        return deployment.bind(settings, embedder_deployment(serve_args.embedding_model,
                                                             replicas=serve_args.embedder_replicas))
    return deployment.bind(settings)


def haproxy_mode(prefer: bool | None = None) -> bool:
    """Whether Ray Serve will use its HAProxy ingress (about twice the requests/s of the Python
    proxy here, and a fifth of its added latency): on where the `haproxy` binary is available unless
    `prefer` is False. Sets the environment Ray reads, so it must run before Ray starts."""
    use = shutil.which("haproxy") is not None and prefer is not False
    if prefer is None and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "0":
        use = False
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if use else "0"
    # Throughput mode on either proxy: the Python proxy then reaches replicas over gRPC and runs their code
    # on their own loop. At 27 requests/s of 12k-token streamed prompts that took it from 75% within a 2 s
    # TTFT SLO to 99-100% (docs/scale-out.md), measured with direct ingress (replica ports for HAProxy) off.
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    if not use:
        os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
    if use:  # Ray's HAProxy also serves stats (8404) and metrics (9101) on every interface, and HAProxy mode
        # keeps a Python proxy on 127.0.0.1:8500 as a fallback; unless the operator chose ports, take free
        # ones so two local gateways do not collide.
        for variable in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                         "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"):
            os.environ.setdefault(variable, str(_free_port()))
    return use


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Ray starts its workers, Serve's replicas and proxies among them, at nice 15: below everything at the
# default priority on the node. Beside CPU-bound neighbours (a vLLM CPU engine at nice 10 in the real-vLLM
# tier) the gateway then relayed a stream's first line only once the generation was over. The gateway is
# latency-critical: its workers run at the default priority (KubeRay: RAY_worker_niceness=0, deploy/kuberay).
WORKER_NICENESS = 0
# Ray's raylet gives its dashboard agent a fixed 15 s to start, which a busy machine sometimes misses
# (the agent alone took 11-18 s to import beside other Ray clusters); a second start then succeeds.
RAY_START_TRIES = 2
RAY_START_TIMEOUT = "timed out during startup"


def start_ray(init: Callable[[], object], shutdown: Callable[[], None]) -> None:
    """`init`, once more after a node that timed out starting (RAY_START_TRIES); other errors raise."""
    for tries_left in reversed(range(RAY_START_TRIES)):
        try:
            init()
            return
        except Exception as error:  # Ray raises a bare Exception when its node times out starting
            if tries_left == 0 or RAY_START_TIMEOUT not in str(error):
                raise
            log.warning("Ray's node timed out starting (a busy machine); starting it again")
            shutdown()


def start_local(args: dict[str, Any], *, port: int, host: str = LOOPBACK, num_cpus: int | None = None,
                haproxy: bool | None = None) -> bool:
    """Start a small local Ray (no dashboard), Serve on `host`:`port`, and the gateway built from
    `args` (`build_app`'s). `haproxy` None picks HAProxy mode when available. Returns whether
    HAProxy mode is on. Ray's processes (HAProxy too) end when this process ends, however it ends;
    a port still held by those of a killed one is taken back, any other holder raises
    PortInUseError (app/fate.py)."""
    import ray

    claim_port(host, port)
    use_haproxy = haproxy_mode(haproxy)
    with fate_shared():
        start_ray(lambda: ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                                   configure_logging=False, _system_config={"worker_niceness": WORKER_NICENESS}),
                  ray.shutdown)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name="fleetgate", route_prefix="/", blocking=False)
    return use_haproxy


def stop_local() -> None:
    """Stop the local Ray and everything on it (Serve's graceful controller shutdown can take 30 s;
    a local cluster we started ourselves has nothing to drain)."""
    import ray

    ray.shutdown()
