"""The audit log: one JSON line per adapter-administration request.

`KeyGuard` opens a record for every request to the admin routes (who: the key's id, never the
key; what: method and path) and writes it once the answer's status is known, refused ones
included; the route adds what it acted on (`note`: adapter name, source, content hash). Lines
go to the `floe.audit` logger, which writes to stderr whatever the host's logging setup (Ray
collects a replica's stderr), and also to `auth.audit_log` when that file is configured.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.types import Scope

RECORD = "floe.audit"  # scope key of the request's open record

log = logging.getLogger("floe.audit")
if not log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # NOTE: one line per action, not a second one through the root logger


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self._path = path

    @staticmethod
    def begin(scope: Scope, action: str) -> dict[str, Any]:
        record: dict[str, Any] = {"event": "floe.admin", "action": action}
        scope[RECORD] = record
        return record

    def write(self, record: dict[str, Any], status: int) -> None:
        outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record,
                           "status": status, "outcome": outcome}, default=str)
        log.info(line)
        if self._path is not None:
            # NOTE: one write of one line in append mode: replicas sharing the file do not interleave.
            with open(self._path, "a", encoding="utf-8") as out:
                out.write(line + "\n")


def note(request: Request, **fields: Any) -> None:
    """Add what an admin route acts on to its request's audit record."""
    record = request.scope.get(RECORD)
    if record is not None:
        record.update({k: v for k, v in fields.items() if v is not None})
