"""`fleetgate demo` compares routers on equal terms: every gated contender gets the same pools
and the same policy, with only its routers replaced; the plain load balancer is the one
contender without gating, and says so in its label."""

from pathlib import Path

import yaml

from fleetgate.app.demo import CONTENDERS, DEMO_POOLS, MODEL, PLAIN_LB, gateway_settings, with_router
from fleetgate.policies.load import BUILTIN_POLICY, load_policy
from fleetgate.pools.config import FleetConfig, InstanceConfig, PoolConfig, load_fleet


def demo_pools():
    """The demo's pools, as `fleet_subprocess` would hand them over (URLs made up, never dialled)."""
    port = iter(range(18000, 18100))
    return FleetConfig(pools=[
        PoolConfig(name=name, model=model, gpu=gpu, instances=[
            InstanceConfig(url=f"http://127.0.0.1:{next(port)}", name=f"{name}-{i}", gpu=gpu) for i in range(count)
        ])
        for name, model, gpu, count in DEMO_POOLS
    ]).to_pools()


def routers_of(policy_file: Path) -> set[str]:
    doc = yaml.safe_load(policy_file.read_text())
    named = [doc["defaults"]["router"], *(rule["router"] for rule in doc["rules"] if "router" in rule)]
    return {r if isinstance(r, str) else r["name"] for r in named}


def test_gated_contenders_share_pools_and_policy_and_differ_only_in_routers(tmp_path):
    pools = demo_pools()
    settings = {c.label: gateway_settings(c, pools, BUILTIN_POLICY, tmp_path) for c in CONTENDERS}
    assert [c.label for c in CONTENDERS] == ["round-robin", "cache-aware", "fleetgate"]
    fleets = {label: load_fleet(s["fleet"]) for label, s in settings.items()}
    assert len({f.model_dump_json() for f in fleets.values()}) == 1  # the same pools for everyone
    assert [p.name for p in fleets["fleetgate"].pools] == [name for name, *_ in DEMO_POOLS]
    assert settings["fleetgate"]["policy"] == str(BUILTIN_POLICY)
    builtin = yaml.safe_load(BUILTIN_POLICY.read_text())
    for label in ("round-robin", "cache-aware"):
        forced = Path(settings[label]["policy"])
        assert routers_of(forced) == {label}
        doc = yaml.safe_load(forced.read_text())
        assert doc["rules"] == [{k: v for k, v in r.items() if k != "router"} | ({"router": label} if "router" in r else {})
                                for r in builtin["rules"]]  # same gating rules, only routers replaced
        load_policy(forced, pools=pools)  # a valid policy for these pools


def test_plain_lb_is_one_flat_pool_without_policy_and_labelled_so(tmp_path):
    settings = gateway_settings(PLAIN_LB, demo_pools(), BUILTIN_POLICY, tmp_path)
    assert "policy" not in settings and settings["router"] == "round-robin"
    (pool,) = load_fleet(settings["fleet"]).pools
    assert len(pool.instances) == sum(count for *_, count in DEMO_POOLS) and pool.model == MODEL
    assert "no gating" in PLAIN_LB.label


def test_with_router_makes_a_relative_fleet_absolute(tmp_path):
    (tmp_path / "p").mkdir()
    policy = tmp_path / "p" / "policy.yaml"
    policy.write_text("version: 1\nfleet: fleet.yaml\nrules:\n- name: a\n  router: dualmap\n- name: b\n")
    doc = yaml.safe_load(with_router(policy, "round-robin"))
    assert doc["fleet"] == str(tmp_path / "p" / "fleet.yaml")
    assert doc["defaults"]["router"] == "round-robin"
    assert doc["rules"] == [{"name": "a", "router": "round-robin"}, {"name": "b"}]
