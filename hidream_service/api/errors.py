"""Every error in the shape of the dialect the caller speaks, chosen by the request path.

    fal (default)  {"detail": "..." | [{"loc", "msg", "type"}, ...]}
    Replicate      {"title", "detail", "status"[, "invalid_fields"]}   (RFC 7807, as Replicate answers)
    WaveSpeed      {"code", "message", "data": null}
    OpenAI         {"error": {"message", "type", "param", "code"}}

Routes raise HTTPException with a message or a fal-style list of field errors; nothing else needs
to know which dialect it is in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("hidream_service")

REPLICATE_PREFIXES = ("/v1/predictions", "/v1/models/", "/v1/files", "/v1/webhooks/default")


def dialect_of(path: str) -> str:
    if path.startswith("/v1/images") or path == "/v1/models":
        return "openai"
    if path.startswith(REPLICATE_PREFIXES):
        return "replicate"
    if path.startswith("/api/v3/"):
        return "wavespeed"
    return "fal"


def _field(error: Mapping[str, Any]) -> str:
    parts = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header")]
    return ".".join(parts)


def _message(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{_field(error)}: {error.get('msg')}" if _field(error) else str(error.get("msg")) for error in detail
        )
    return str(detail)


def render_error(path: str, status: int, detail: Any) -> dict[str, Any]:
    dialect = dialect_of(path)
    if dialect == "fal":
        return {"detail": detail}
    message = _message(detail)
    if dialect == "replicate":
        body: dict[str, Any] = {"title": HTTPStatus(status).phrase, "detail": message, "status": status}
        if isinstance(detail, list):
            body["title"] = "Input validation failed"
            body["invalid_fields"] = [
                {"type": error.get("type"), "field": _field(error), "description": error.get("msg")} for error in detail
            ]
        return body
    if dialect == "wavespeed":
        return {"code": status, "message": message, "data": None}
    param = _field(detail[0]) if isinstance(detail, list) and detail else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": _openai_code(status, detail)}}


def _openai_code(status: int, detail: Any) -> str | None:
    if status == 404:
        return "not_found"
    if isinstance(detail, list) and detail:
        return "invalid_value"
    return None


def status_for(path: str, status: int) -> int:
    """OpenAI and WaveSpeed answer a bad input with 400, fal and Replicate with 422."""
    if status == 422 and dialect_of(path) in ("openai", "wavespeed"):
        return 400
    return status


def error_response(path: str, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    status = status_for(path, status)
    return JSONResponse(render_error(path, status, detail), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{key: error[key] for key in ("loc", "msg", "type") if key in error} for error in exc.errors()]
        return error_response(request.url.path, 422, detail)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal server error")
