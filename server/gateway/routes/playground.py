"""GET /playground: the browser playground (static HTML / CSS / JS shipped in the package).

The page needs no service: it calls the public routes itself with the key the user types, so
the family's `build` needs no handle. Only the files of `server/gateway/playground/` are
served, listed once at import (no path from the request ever reaches the filesystem), with a
Content-Security-Policy that lets the page load and connect to this origin only.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from floe.server.errors import NotFound
from floe.server.gateway.families import Family

STATIC = Path(__file__).resolve().parent.parent / "playground"
FILES = {p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and not p.name.startswith(".")}
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
HEADERS = {
    # NOTE: 'self' covers ws:/wss: to this host (CSP 3); blob:/data: for the user's own files.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()
family = Family("playground", router)


def _file(name: str) -> Response:
    path = FILES.get(name)
    if path is None:
        raise NotFound(f"the playground has no file {name!r}")
    media_type = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=HEADERS)


@router.get("/playground", include_in_schema=False)
async def playground() -> Response:
    # NOTE: relative, so the page works behind a proxy's path prefix; its own links and API
    # calls are relative to /playground/ too.
    return RedirectResponse("playground/")


@router.get("/playground/", include_in_schema=False)
async def playground_index() -> Response:
    return _file("index.html")


@router.get("/playground/{name}", include_in_schema=False)
async def playground_file(name: str) -> Response:
    return _file(name)
