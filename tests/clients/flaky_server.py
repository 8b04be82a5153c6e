"""A real local HTTP server whose answers a test scripts: statuses, Retry-After, delays.

It stands in for floe only where floe cannot be made to misbehave on cue (429 / 503 with a
given Retry-After); the client under test is the real one, over real sockets.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


@dataclass
class Script:
    """Answers for the next requests, in order; after them: `final`."""

    answers: list[dict] = field(default_factory=list)
    seen: list[tuple[float, str, str, dict]] = field(default_factory=list)  # (t, method, path, headers)


def _error_body(status: int) -> dict:
    kinds = {429: ("rate_limit_error", "overloaded"), 503: ("service_unavailable", "not_ready"),
             404: ("invalid_request_error", "not_found"), 500: ("internal_error", "engine_error")}
    kind, code = kinds.get(status, ("invalid_request_error", None))
    return {"error": {"message": f"scripted {status}", "type": kind, "param": None, "code": code}}


def build_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def answer(path: str, request: Request):
        script.seen.append((time.monotonic(), request.method, "/" + path, dict(request.headers)))
        spec = script.answers.pop(0) if script.answers else {"status": 200}
        if spec.get("sleep"):
            await asyncio.sleep(spec["sleep"])
        status = spec.get("status", 200)
        headers = {"Retry-After": spec["retry_after"]} if "retry_after" in spec else {}
        if "text" in spec:
            return PlainTextResponse(spec["text"], status_code=status, headers=headers)
        if status >= 400 and not spec.get("readiness"):
            return JSONResponse(_error_body(status), status_code=status, headers=headers)
        return JSONResponse(spec.get("json", {"object": "list", "data": []}), status_code=status,
                            headers=headers)

    return app


class FlakyServer:
    def __init__(self, port: int) -> None:
        self.script = Script()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(build_app(self.script), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FlakyServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the scripted server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def play(self, *answers: dict) -> None:
        self.script.answers[:] = list(answers)
        self.script.seen.clear()

    @property
    def times(self) -> list[float]:
        return [t for t, *_ in self.script.seen]

    def gaps(self) -> list[float]:
        times = self.times
        return [b - a for a, b in zip(times, times[1:])]
