"""app/serve.py start_ray: a Ray node that timed out starting is started once more; nothing else is retried."""

from __future__ import annotations

import pytest

from fleetgate.app.serve import RAY_START_TIMEOUT, start_ray


class FakeRay:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.inits = self.shutdowns = 0

    def init(self) -> None:
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_node_that_timed_out_starting_is_started_again() -> None:
    ray = FakeRay([Exception(f"The current node {RAY_START_TIMEOUT}. This could happen because ...")])
    start_ray(ray.init, ray.shutdown)
    assert (ray.inits, ray.shutdowns) == (2, 1)


def test_a_second_timeout_and_other_errors_raise() -> None:
    timeout = Exception(f"node {RAY_START_TIMEOUT}")
    ray = FakeRay([timeout, timeout])
    with pytest.raises(Exception, match=RAY_START_TIMEOUT):
        start_ray(ray.init, ray.shutdown)
    assert ray.inits == 2
    ray = FakeRay([ValueError("bad address")])
    with pytest.raises(ValueError):
        start_ray(ray.init, ray.shutdown)
    assert (ray.inits, ray.shutdowns) == (1, 0)
