"""The gateway deployment's replicas: fixed, or Ray Serve autoscaling on ongoing requests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleetgate.app.serve import build_app
from fleetgate.app.settings import ServeSettings

FLEET = {"worker_urls": ["http://127.0.0.1:9"], "model": "m"}


def deployment_config(args: dict) -> object:
    return build_app({**FLEET, **args})._bound_deployment._deployment_config  # noqa: SLF001


def test_without_max_replicas_the_gateway_has_a_fixed_number_of_replicas() -> None:
    config = deployment_config({"num_replicas": 3})
    assert config.autoscaling_config is None and config.num_replicas == 3


def test_max_replicas_autoscales_from_num_replicas_on_ongoing_requests() -> None:
    config = deployment_config({"num_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 50,
                                "upscale_delay_s": 3, "downscale_delay_s": 60, "autoscaling_look_back_s": 20,
                                "graceful_shutdown_timeout_s": 15})
    scaling = config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (2, 5, 50)
    assert (scaling.upscale_delay_s, scaling.downscale_delay_s, scaling.look_back_period_s) == (3, 60, 20)
    assert config.graceful_shutdown_timeout_s == 15  # a replica scaled down drains its streams this long


def test_max_replicas_below_num_replicas_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_replicas .1. must be at least num_replicas .2."):
        ServeSettings(**FLEET, num_replicas=2, max_replicas=1)
