"""VectorStore: collections of vectors with payloads on Qdrant.

Embedded local mode (data on disk under `path`, survives restarts; one process may open it,
hence one store replica) by default, or a Qdrant server at `url` for scale-out. A collection
remembers its dimension, distance and the embedding model that fills it (Qdrant collection
metadata), so text upserts and text queries are embedded by the same model.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from floe.server.errors import Conflict, InvalidRequest, NotFound
from floe.server.names import NAME_RULE, valid_name

ID_KEY = "_floe_id"  # original string id of a point whose id is not an int or a UUID
ID_NAMESPACE = uuid.UUID("6f1c2d4e-8a3b-4c5d-9e7f-0a1b2c3d4e5f")
DISTANCES = ("cosine", "dot", "euclid")
FILTER_KEYS = {"must", "should", "must_not", "min_should"}


class VectorStore:
    def __init__(self, url: str | None = None, api_key: str | None = None,
                 path: Path | None = None) -> None:
        from qdrant_client import QdrantClient

        if url:
            self._client = QdrantClient(url=url, api_key=api_key)
        else:
            if path is None:
                raise ValueError("a local vector store needs a path")
            Path(path).mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=str(path))
        self._lock = threading.Lock()  # NOTE: the embedded store is not safe across threads

    def close(self) -> None:
        self._client.close()

    # -- collections ------------------------------------------------------------------------
    def create(self, name: str, dimension: int, distance: str = "cosine",
               model: str | None = None) -> dict[str, Any]:
        from qdrant_client import models

        _check_name(name)
        if distance not in DISTANCES:
            raise InvalidRequest(f"distance must be one of {DISTANCES}", param="distance")
        if not isinstance(dimension, int) or not 1 <= dimension <= 65536:
            raise InvalidRequest("dimension must be an integer in 1..65536", param="dimension")
        with self._lock:
            if self._client.collection_exists(name):
                raise Conflict(f"collection {name!r} already exists", param="name")
            self._client.create_collection(
                name, vectors_config=models.VectorParams(size=dimension, distance=_distance(distance)),
                metadata={"model": model, "distance": distance})
        return self.get(name)

    def get(self, name: str) -> dict[str, Any]:
        with self._lock:
            if not self._client.collection_exists(name):
                raise NotFound(f"collection {name!r} does not exist", param="name")
            info = self._client.get_collection(name)
        meta = info.config.metadata or {}
        return {"id": name, "object": "retrieval.collection",
                "dimension": info.config.params.vectors.size,
                "distance": meta.get("distance"), "model": meta.get("model"),
                "points": info.points_count or 0}

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            names = sorted(c.name for c in self._client.get_collections().collections)
        return [self.get(n) for n in names]

    def delete(self, name: str) -> None:
        with self._lock:
            if not self._client.collection_exists(name):
                raise NotFound(f"collection {name!r} does not exist", param="name")
            self._client.delete_collection(name)

    # -- points -----------------------------------------------------------------------------
    def upsert(self, name: str, ids: list[int | str], vectors: list[list[float]],
               payloads: list[dict[str, Any] | None]) -> int:
        from qdrant_client import models

        info = self.get(name)
        for i, vector in enumerate(vectors):
            if len(vector) != info["dimension"]:
                raise InvalidRequest(f"points[{i}]: vector has {len(vector)} dimensions; collection "
                                     f"{name!r} has {info['dimension']}", param=f"points[{i}]")
        points = []
        for point_id, vector, payload in zip(ids, vectors, payloads):
            qid, original = _point_id(point_id)
            body = dict(payload or {})
            if original is not None:
                body[ID_KEY] = original
            points.append(models.PointStruct(id=qid, vector=vector, payload=body))
        with self._lock:
            self._client.upsert(name, points=points, wait=True)
        return len(points)

    def search(self, name: str, vector: list[float], top_k: int,
               filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        info = self.get(name)
        if len(vector) != info["dimension"]:
            raise InvalidRequest(f"query vector has {len(vector)} dimensions; collection {name!r} "
                                 f"has {info['dimension']}", param="vector")
        with self._lock:
            hits = self._client.query_points(name, query=vector, limit=top_k, with_payload=True,
                                             query_filter=_filter(filter)).points
        results = []
        for hit in hits:
            payload = dict(hit.payload or {})
            original = payload.pop(ID_KEY, None)
            results.append({"id": original if original is not None else hit.id,
                            "score": hit.score, "payload": payload})
        return results


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise InvalidRequest(f"collection name {name!r} must be {NAME_RULE}", param="name")


def _distance(name: str):
    from qdrant_client import models

    return {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT,
            "euclid": models.Distance.EUCLID}[name]


def _point_id(point_id: int | str) -> tuple[int | str, str | None]:
    """Qdrant accepts unsigned ints and UUIDs; any other string id maps to a UUID5 of it."""
    if isinstance(point_id, bool) or not isinstance(point_id, (int, str)):
        raise InvalidRequest("point ids must be integers or strings", param="id")
    if isinstance(point_id, int):
        if point_id < 0:
            raise InvalidRequest("integer point ids must be >= 0", param="id")
        return point_id, None
    try:
        return str(uuid.UUID(point_id)), None
    except ValueError:
        return str(uuid.uuid5(ID_NAMESPACE, point_id)), point_id


def _filter(spec: dict[str, Any] | None):
    """Qdrant's own filter JSON (`must` / `should` / `must_not`), or `{field: value}` equality."""
    from pydantic import ValidationError
    from qdrant_client import models

    if not spec:
        return None
    if not isinstance(spec, dict):
        raise InvalidRequest("filter must be an object", param="filter")
    if not set(spec) & FILTER_KEYS:
        spec = {"must": [{"key": k, "match": {"any": v} if isinstance(v, list) else {"value": v}}
                         for k, v in spec.items()]}
    try:
        return models.Filter.model_validate(spec)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid filter: {exc.errors()[0]['msg']}", param="filter") from exc
