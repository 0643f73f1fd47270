"""deploy/: the Helm chart rendered by Helm itself, the KubeRay RayService, and the command lines of
deploy/README.md, every object checked against the Kubernetes and CRD schemas in deploy/schemas/.

Helm comes from PyPI (`helm-python-sdk`: Helm 4's Go SDK as a shared library, no `helm` binary), a
test dependency: a missing one fails here, never skips. The schemas are strict (tests/support/k8s_schemas.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from support.k8s_schemas import ROOT, documents, known_kinds, validate

from fleetgate.app.cli import main as fleetgate
from fleetgate.app.settings import ServeCommandSettings, ServeSettings, read_config, resolve
from fleetgate.pools.config import load_fleet
from fleetgate.router.keys import load_keys

CHART = ROOT / "deploy" / "helm" / "fleetgate"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
README = ROOT / "deploy" / "README.md"
FLEET = (ROOT / "deploy" / "fleet.example.yaml").read_text()
NOT_MANIFESTS = ("schemas", "helm")  # vendored schemas; chart sources (rendered below instead)

EVERYTHING_ON = {
    "fleet": FLEET, "policy": (ROOT / "policies" / "examples" / "heterogeneous.yaml").read_text(),
    "keys": {"file": "keys: []\n"}, "adminToken": {"existingSecret": "fleetgate-admin"},
    "redis": {"enabled": True}, "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "autoscaling": {"enabled": True}, "discovery": {"namespaces": ["llm", "llm-big"]},
    "gateway": {"env": {"FLEETGATE_MAX_ATTEMPTS": "2"}, "nodeSelector": {"pool": "cpu"}},
    "imagePullSecrets": [{"name": "registry"}],
}  # fmt: skip
VALUE_SETS = {
    "open, nothing optional": {"fleet": FLEET, "gateway": {"allowOpen": True}},
    "everything on": EVERYTHING_ON,
    "external redis, existing keys secret": {"fleet": FLEET, "keys": {"existingSecret": "mine"},
                                             "redis": {"url": "redis://redis.shared:6379/0"}},
}


def render(values: dict[str, Any], namespace: str = "llm", release: str = "fleetgate") -> list[tuple[str, dict[str, Any]]]:
    """Helm's own rendering of the chart: (label, object) for every object."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    return [item for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for item in documents(text, Path(path).name)]


def assert_valid(objects: list[tuple[str, dict[str, Any]]]) -> None:
    problems = [str(problem) for label, manifest in objects for problem in validate(manifest, label)]
    assert not problems, "\n".join(problems)


def of_kind(objects: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [manifest for _, manifest in objects if manifest["kind"] == kind]


# --- the schemas judge ------------------------------------------------------------------------------


def test_the_vendored_schemas_cover_what_deploy_uses() -> None:
    assert {("apps/v1", "Deployment"), ("v1", "ConfigMap"), ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("ray.io/v1", "RayService"), ("monitoring.coreos.com/v1", "ServiceMonitor")} <= known_kinds()


def test_a_misspelt_field_is_caught_in_builtin_and_custom_kinds() -> None:
    """Strict schemas: what the API server would drop silently is an error here."""
    objects = dict(documents(RAYSERVICE.read_text(), "rayservice"))
    service = next(m for m in objects.values() if m["kind"] == "RayService")
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 3  # replicas
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "x"
    deployment = of_kind(render(VALUE_SETS["open, nothing optional"]), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"  # not an integer
    deployment["spec"]["replica"] = 2
    found = [str(p) for p in validate(service, "rayservice") + validate(deployment, "deployment")]
    assert any("'replica' was unexpected" in p and "workerGroupSpecs/0" in p for p in found), found
    assert any("'imagePullPolcy' was unexpected" in p for p in found), found
    assert any("spec: Additional properties" in p and "'replica'" in p for p in found), found
    assert any("ports/0/containerPort: '8000' is not" in p for p in found), found


# --- every manifest in deploy/ ------------------------------------------------------------------------


def test_every_manifest_in_deploy_passes_its_schema() -> None:
    """Any YAML document under deploy/ with an apiVersion and a kind is a Kubernetes object to check."""
    objects = []
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        if path.relative_to(ROOT / "deploy").parts[0] in NOT_MANIFESTS:
            continue
        objects += [(label, m) for label, m in documents(path.read_text(), str(path.relative_to(ROOT)))
                    if isinstance(m, dict) and "apiVersion" in m and "kind" in m]
    assert {m["kind"] for _, m in objects} >= {"RayService", "ConfigMap"}
    assert_valid(objects)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_renders_to_valid_objects(name: str) -> None:
    objects = render(VALUE_SETS[name])
    assert_valid(objects)
    assert {"Deployment", "Service", "ConfigMap"} <= {m["kind"] for _, m in objects}


def test_everything_on_renders_each_part_once_wired_together() -> None:
    objects = render(EVERYTHING_ON)
    kinds = sorted(m["kind"] for _, m in objects)
    assert kinds.count("Role") == kinds.count("RoleBinding") == 2  # one per discovery namespace
    for kind in ("ServiceMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "NetworkPolicy",
                 "ServiceAccount"):
        assert kinds.count(kind) == 1, (kind, kinds)
    gateway = next(m for m in of_kind(objects, "Deployment") if m["metadata"]["name"] == "fleetgate")
    assert "replicas" not in gateway["spec"]  # the autoscaler owns it
    monitor = of_kind(objects, "ServiceMonitor")[0]
    service = next(m for m in of_kind(objects, "Service") if m["metadata"]["name"] == "fleetgate")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pod = gateway["spec"]["template"]["spec"]
    mounted = {v["name"]: v for v in pod["volumes"]}
    assert mounted["keys"]["secret"]["secretName"] == of_kind(objects, "Secret")[0]["metadata"]["name"]
    assert {m["metadata"]["namespace"] for m in of_kind(objects, "Role")} == {"llm", "llm-big"}
    assert pod["serviceAccountName"] == of_kind(objects, "ServiceAccount")[0]["metadata"]["name"]


def test_helm_lint_finds_no_error() -> None:
    report = helm.lint(str(CHART), VALUE_SETS["everything on"], strict=True, kube_version="1.33.0")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] > 1], report  # info (a missing icon) only


@pytest.mark.parametrize(("values", "says"), [
    ({"fleet": FLEET}, "gateway.allowOpen"),
    ({"gateway": {"allowOpen": True}}, "values.fleet is required"),
    ({"fleet": FLEET, "gateway": {"allowOpen": True}, "redis": {"enabled": True, "url": "redis://x:6379"}},
     "leave redis.url empty"),
])  # fmt: skip
def test_the_chart_refuses_an_unsafe_or_incomplete_release(values: dict[str, Any], says: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(says)):
        render(values)


# --- what the gateway is given is what `fleetgate serve` accepts ------------------------------------


def mounted_files(objects: list[tuple[str, dict[str, Any]]], tmp_path: Path) -> dict[str, Path]:
    """The ConfigMap and Secret entries the gateway pod mounts, written under tmp_path: mount path -> file."""
    data = {m["metadata"]["name"]: m.get("data") or m.get("stringData") or {}
            for _, m in objects if m["kind"] in ("ConfigMap", "Secret")}
    pod = next(m for m in of_kind(objects, "Deployment") if m["metadata"]["name"] == "fleetgate")["spec"]["template"]["spec"]
    sources = {v["name"]: (v.get("configMap") or {}).get("name") or (v.get("secret") or {}).get("secretName")
               for v in pod["volumes"]}
    files = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        for entry, text in data.get(sources[mount["name"]], {}).items():
            files[f"{mount['mountPath']}/{entry}"] = tmp_path / mount["name"] / entry
            files[f"{mount['mountPath']}/{entry}"].parent.mkdir(exist_ok=True)
            files[f"{mount['mountPath']}/{entry}"].write_text(text)
    return files


def test_the_chart_gives_the_gateway_settings_fleetgate_serve_accepts(tmp_path: Path) -> None:
    objects = render(EVERYTHING_ON)
    files = mounted_files(objects, tmp_path)
    container = next(m for m in of_kind(objects, "Deployment")
                     if m["metadata"]["name"] == "fleetgate")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["fleetgate", "serve", "--bare"]
    environ = {e["name"]: str(files.get(e.get("value"), e.get("value", "from-a-secret"))) for e in container["env"]}
    settings = resolve(ServeCommandSettings, flags={}, environ=environ)
    unknown = {name for name in environ if name.startswith("FLEETGATE_")} - {
        f"FLEETGATE_{field.upper()}" for field in ServeCommandSettings.model_fields} - {"FLEETGATE_ADMIN_TOKEN"}
    assert not unknown, f"the chart sets variables no setting reads: {unknown}"
    assert (settings.host, settings.port, settings.max_attempts) == ("0.0.0.0", 8000, 2)
    assert settings.admin_token_env == "FLEETGATE_ADMIN_TOKEN" and "FLEETGATE_ADMIN_TOKEN" in environ
    assert settings.redis_url == "redis://fleetgate-redis:6379/0"
    assert "fleetgate-redis" in {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    assert [p.name for p in settings.fleet_config().pools] == ["chat-small", "general", "long-context"]
    assert not load_keys(settings.keys).keys and Path(settings.policy).read_text() == EVERYTHING_ON["policy"]


def test_the_rayservice_runs_the_serve_yaml_application_with_valid_settings(tmp_path: Path) -> None:
    objects = list(documents(RAYSERVICE.read_text(), "rayservice.yaml"))
    service = of_kind(objects, "RayService")[0]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    application = config["applications"][0]
    reference = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())["applications"][0]
    assert application["import_path"] == reference["import_path"]
    settings = ServeSettings(**application["args"])  # names and types as build_app reads them
    assert settings.keys, "the RayService's gateway is reachable in the cluster: it must require keys"
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    fleet_dir, fleet_file = settings.fleet.rsplit("/", 1)
    fleet_map = of_kind(objects, "ConfigMap")[0]
    assert volumes[mounts[fleet_dir]]["configMap"]["name"] == fleet_map["metadata"]["name"]
    (tmp_path / fleet_file).write_text(fleet_map["data"][fleet_file])
    assert load_fleet(tmp_path / fleet_file).pools
    assert volumes[mounts[settings.keys.rsplit("/", 1)[0]]]["secret"]["secretName"] == "fleetgate-keys"
    env = {e["name"]: e["value"] for e in head["containers"][0]["env"]}
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_worker_niceness"] == "0"  # app/serve.py WORKER_NICENESS: as `fleetgate serve` runs them
    assert read_config  # deploy/serve.yaml's reader stays the one `fleetgate serve --config` uses


# --- the command lines deploy/README.md shows ------------------------------------------------------


def shown_commands() -> list[str]:
    lines, in_block = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def helm_values(words: list[str], where: Path) -> tuple[dict[str, Any], str]:
    """The values and namespace a `helm install|template` line gives (`--set`, `--set-file`, `--namespace`)."""
    values: dict[str, Any] = {}
    namespace = "default"
    pairs = iter(words)
    for word in pairs:
        if word in ("--set", "--set-file"):
            key, _, value = next(pairs).partition("=")
            leaf: Any = (where / value).read_text() if word == "--set-file" else yaml.safe_load(value)
            node = values
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = leaf
        elif word in ("--namespace", "-n"):
            namespace = next(pairs)
        else:
            raise AssertionError(f"flag {word!r} of a documented helm line is not exercised by this test")
    return values, namespace


def test_the_readme_command_lines_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line in deploy/README.md's code blocks, run here as far as a machine without a cluster can:
    fleetgate lines run, helm lines render (and validate), kubectl lines' objects validate and match."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet.yaml").write_text(FLEET)  # "your fleet file"
    ran = set()
    for line in shown_commands():
        program, *words = shlex.split(line)
        if program == "fleetgate":
            assert fleetgate(words) == 0, line
        elif program == "helm" and words[0] in ("install", "template"):
            assert (ROOT / words[2]).resolve() == CHART, line
            values, namespace = helm_values(words[3:], tmp_path)
            objects = render(values, namespace, release=words[1])
            assert_valid(objects)
            assert f"{words[1]}-fleetgate" in {m["metadata"]["name"] for m in of_kind(objects, "Deployment")}
        elif program == "kubectl" and words[:3] == ["create", "secret", "generic"]:
            name, source = words[3], words[4].removeprefix("--from-file=")
            assert load_keys(tmp_path / source).keys, "the keys file the line before made"
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                      "data": {source: "c2VjcmV0"}}
            assert_valid([(line, secret)])
            assert f"secretName: {name}" in RAYSERVICE.read_text() and f"/{source}" in RAYSERVICE.read_text()
        elif program == "kubectl" and words[:2] == ["apply", "-f"]:
            path = ROOT / words[2]
            assert path == RAYSERVICE, line
            assert_valid(list(documents(path.read_text(), words[2])))
        else:
            raise AssertionError(f"deploy/README.md shows a line no test runs: {line}")
        ran.add(program)
    assert ran == {"fleetgate", "helm", "kubectl"}
