"""A small kustomize renderer for the features deploy/k8s uses, so the overlays render offline
with no kustomize binary: resources (files and kustomization directories), namespace,
labels (metadata only), patches (JSON 6902 lists, or strategic-merge maps, which for a custom
resource merge maps and replace lists, as kustomize does without a schema for it).
A feature it does not know is an error, never silently ignored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "labels", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(directory: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not know: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        objects += render(target) if target.is_dir() else load_documents(target)
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, objects)
    for label in spec.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise ValueError("labels with includeSelectors / includeTemplates are not supported")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def _apply_patch(directory: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    body = yaml.safe_load((directory / patch["path"]).read_text())
    target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
    if len(matches) != 1:
        raise ValueError(f"patch {patch['path']}: {len(matches)} objects match {target}")
    obj = matches[0]
    if isinstance(body, list):
        for op in body:
            json6902(obj, op)
    else:
        merged = merge(obj, body)
        obj.clear()
        obj.update(merged)


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge without a schema: maps merge, `null` deletes, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _walk(obj: Any, path: str) -> tuple[Any, str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = obj
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        return node, (len(node) if last == "-" else int(last))
    return node, last


def json6902(obj: dict[str, Any], op: dict[str, Any]) -> None:
    node, key = _walk(obj, op["path"])
    kind = op["op"]
    if kind == "replace":
        node[key]  # must exist  # noqa: B018
        node[key] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(node, list):
            node.insert(key, copy.deepcopy(op["value"]))
        else:
            node[key] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[key]
    else:
        raise ValueError(f"JSON patch op {kind!r} is not supported")
