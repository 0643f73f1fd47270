"""Kubernetes manifests checked against the schemas vendored in deploy/schemas/ (deploy/schemas/README.md).

Built-in kinds use the Kubernetes OpenAPI schemas as JSON Schema, strict (an unknown field is an
error, as `kubectl apply --validate=strict` makes it). Custom resources (KubeRay's RayService,
Prometheus Operator's ServiceMonitor) use their CRD's openAPIV3Schema, made strict the same way:
an object that lists its properties and neither allows others nor preserves unknown fields gets
`additionalProperties: false` (the API server would silently prune such a field; a typo there would
deploy without what was meant). Their `metadata` is checked as Kubernetes' ObjectMeta.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterable

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy" / "schemas"
KUBERNETES_DEFINITIONS = SCHEMAS / "kubernetes" / "v1.33.0-local-strict" / "_definitions.json"
CRDS = (
    SCHEMAS / "kuberay" / "v1.7.0" / "ray.io_rayservices.yaml",
    SCHEMAS / "prometheus-operator" / "v0.93.0" / "monitoring.coreos.com_servicemonitors.yaml",
)
DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB of YAML: libyaml's parser where built
OBJECT_META = f"{DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@dataclass(frozen=True, slots=True)
class Problem:
    """One schema violation in one manifest: which manifest, where in it, what."""

    manifest: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.manifest}: {self.path or '(top)'}: {self.message}"


@cache
def _kubernetes() -> tuple[Registry, dict[tuple[str, str], str]]:
    """The definitions as a registry, and (apiVersion, kind) -> definition name."""
    document = json.loads(KUBERNETES_DEFINITIONS.read_text())
    kinds = {}
    for name, definition in document["$defs"].items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            kinds.setdefault((api_version, gvk["kind"]), name)
    registry = Registry().with_resource(DEFINITIONS_URI, Resource.from_contents(document))
    return registry, kinds


def strict(schema: Any) -> Any:
    """`schema` (an openAPIV3Schema) where objects with listed properties allow no others."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def _custom_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema, for every served version of the vendored CRDs."""
    schemas = {}
    for path in CRDS:
        crd = yaml.load(path.read_text(), Loader=YAML_LOADER)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"$ref": OBJECT_META}
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def known_kinds() -> set[tuple[str, str]]:
    return set(_kubernetes()[1]) | set(_custom_resources())


def validate(manifest: dict[str, Any], name: str) -> list[Problem]:
    """Every violation of `manifest` (one Kubernetes object) against its kind's schema."""
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    registry, kinds = _kubernetes()
    if key in kinds:
        schema: dict[str, Any] = {"$ref": f"{DEFINITIONS_URI}#/$defs/{kinds[key]}"}
    elif key in _custom_resources():
        schema = _custom_resources()[key]
    else:
        return [Problem(name, "", f"no schema for apiVersion {key[0]!r} kind {key[1]!r}")]
    validator = Draft202012Validator(schema, registry=registry)
    return [Problem(name, "/".join(map(str, error.absolute_path)), error.message)
            for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))]


def documents(text: str, name: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """(name#index kind/name, object) for each non-empty YAML document of a manifest stream."""
    for index, document in enumerate(yaml.safe_load_all(text)):
        if document:
            label = f"{name}#{index} {document.get('kind')}/{(document.get('metadata') or {}).get('name')}"
            yield label, document
