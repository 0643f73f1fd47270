"""`fleetgate simulate --router`: one name, a comma-separated comparison, 'all', precise variants, the oracle."""

from __future__ import annotations

import pytest

from fleetgate.app.cli import build_parser
from fleetgate.router.routing.registry import ROUTER_NAMES


def routers(value: str) -> tuple[str, ...]:
    return build_parser().parse_args(["simulate", "--trace", "t", "--trace-format", "mooncake", "--router", value]).router


def test_router_lists_parse() -> None:
    assert routers("dualmap") == ("dualmap",)
    assert routers("dualmap,dualmap+precise, cache-aware,oracle") == ("dualmap", "dualmap+precise", "cache-aware", "oracle")
    assert routers("all") == ROUTER_NAMES


@pytest.mark.parametrize("value", ["bogus", "dualmap,nope", "oracle+precise", ","])
def test_unknown_routers_are_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        routers(value)
    assert "--router" in capsys.readouterr().err
