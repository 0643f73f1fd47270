"""Ray Serve front tier: the gateway's ASGI app as an ingress deployment (the only Ray code here).

Each replica builds its own runtime (aiohttp session, fleet refresh task, routers) from the same
settings, so replicas share nothing on the request path: DualMap's candidate pair is a pure
function of the prompt and the pool, and load is read from each replica's own scrape.

`serve run deploy/serve.yaml` uses `build_app`; `fleetgate serve` starts a small local Ray and
calls the same builder.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from pydantic import ConfigDict, Field
from ray import serve
from ray.serve import Application

from router.compose import GatewaySettings, build_asgi_app


class ServeArgs(GatewaySettings):
    """`build_app` arguments: the gateway settings plus how many replicas to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=1000, ge=1)


@serve.ingress()
class GatewayIngress:
    """One gateway replica; the app (and its lifespan) is built on the replica itself."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = GatewaySettings(**settings)

    def __serve_build_asgi_app__(self) -> Any:
        return build_asgi_app(self._settings)


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder (`import_path: router.serve:build_app` in serve.yaml)."""
    serve_args = ServeArgs(**args)
    settings = GatewaySettings(**serve_args.model_dump(exclude={"num_replicas", "max_ongoing_requests"}))
    deployment = serve.deployment(
        GatewayIngress,
        name="fleetgate",
        num_replicas=serve_args.num_replicas,
        max_ongoing_requests=serve_args.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    )
    return deployment.bind(settings.model_dump())


def haproxy_mode() -> bool:
    """Use Ray Serve's HAProxy ingress (about 5x the requests/s of the Python proxy) when the
    `haproxy` binary is available; must be decided before Ray starts."""
    if shutil.which("haproxy") is None:
        return False
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    return os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def start_local(args: dict[str, Any], *, port: int, num_cpus: int | None = None) -> bool:
    """Start a small local Ray (no dashboard), Serve on 127.0.0.1:`port`, and the gateway.
    Returns whether HAProxy mode is on."""
    import ray

    haproxy = haproxy_mode()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="fleetgate", route_prefix="/", blocking=False)
    return haproxy


def stop_local() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()
