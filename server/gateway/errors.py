"""The one module that maps exceptions to HTTP answers with OpenAI's error body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from floe.server.errors import EngineError, FloeError, InvalidRequest, NotFound, unwrap, validation_error

log = logging.getLogger("floe.gateway")


def error_response(err: FloeError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FloeError)
    async def _floe(_: Request, exc: FloeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFound(f"no such route: {exc.detail}"))
        err = InvalidRequest(str(exc.detail))
        err.status = exc.status_code
        return error_response(err)

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> JSONResponse:
        err = unwrap(exc)
        if err is None:
            log.exception("unhandled error")
            err = EngineError("internal server error")
        return error_response(err)
