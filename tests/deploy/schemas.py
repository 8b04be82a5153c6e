"""Validators for the rendered manifests: Kubernetes' own schemas (kubernetes-validate) for
built-in kinds, KubeRay's RayService CRD (deploy/schemas) for the RayService."""

from __future__ import annotations

import copy
import gzip
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests promise to work on


def validate_builtin(obj: dict[str, Any]) -> None:
    """Raises kubernetes_validate.ValidationError on an unknown field or a wrong type."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """Unknown fields become errors (as `kubectl apply --validate=strict`), except where the CRD
    says `x-kubernetes-preserve-unknown-fields`; `nullable` becomes a JSON-schema null type."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@lru_cache(maxsize=1)
def rayservice_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(gzip.decompress((DEPLOY / "schemas" / "ray.io_rayservices.v1.7.0.yaml.gz").read_bytes()))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # metadata is checked by Kubernetes' ObjectMeta schema, not by the CRD
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def validate_rayservice(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayService"
    errors = sorted(rayservice_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        raise jsonschema.ValidationError(
            "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]))
    # the metadata and each embedded pod template against Kubernetes' own schemas too
    validate_builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
    cluster = obj["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        validate_builtin({"apiVersion": "v1", "kind": "PodTemplate",
                          "metadata": {"name": "check"}, "template": group["template"]})


def validate(obj: dict[str, Any]) -> None:
    if obj.get("kind") == "RayService":
        validate_rayservice(obj)
    else:
        validate_builtin(obj)
