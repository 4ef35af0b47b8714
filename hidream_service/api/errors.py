"""Every error in the shape of the dialect whose route raised it.

Routes raise HTTPException with a message or a fal-style list of field errors; each dialect's router
is built with `shaped_route(render)`, which answers whatever its routes raise with that dialect's
renderer:

    fal (and the service's own routes)  {"detail": "..." | [{"loc", "msg", "type"}, ...]}
    Replicate                           {"title", "detail", "status"[, "invalid_fields"]}   (RFC 7807)
    WaveSpeed                           {"code", "message", "data": null}
    OpenAI                              {"error": {"message", "type", "param", "code"}}

A request no route matches (an unknown path, a wrong method) gets the service's own shape. A
request that could not be written because the disk or the database is full is a 507 (Insufficient
Storage), in the same shape, with nothing of it kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from hidream_service.storage_full import STORAGE_FULL_MESSAGE, is_storage_full

log = logging.getLogger("hidream_service")

#: (HTTP status, detail) -> (status to answer, body); a dialect may answer a status of its own.
ErrorRenderer = Callable[[int, Any], tuple[int, dict[str, Any]]]


def detail_body(status: int, detail: Any) -> tuple[int, dict[str, Any]]:
    """The service's own shape, which is fal's."""
    return status, {"detail": detail}


def error_response(
    render: ErrorRenderer, status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    status, body = render(status, detail)
    return JSONResponse(body, status_code=status, headers=headers)


def validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{key: error[key] for key in ("loc", "msg", "type") if key in error} for error in exc.errors()]


#: A route's ASGI-level handler, as FastAPI builds it.
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


async def shaped(render: ErrorRenderer, request: Request, handler: Handler) -> Response:
    """Run a route; answer what it raises in `render`'s shape."""
    try:
        return await handler(request)
    except StarletteHTTPException as exc:
        return error_response(render, exc.status_code, exc.detail, getattr(exc, "headers", None))
    except RequestValidationError as exc:
        return error_response(render, 422, validation_detail(exc))
    except Exception as exc:
        return unexpected_error_response(render, request, exc)


def unexpected_error_response(render: ErrorRenderer, request: Request, exc: Exception) -> JSONResponse:
    """What an exception no handler answered becomes: a 507 for want of room, else a logged 500."""
    if is_storage_full(exc):
        return storage_full_response(render, request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(render, 500, "internal server error")


def storage_full_response(render: ErrorRenderer, request: Request, exc: Exception) -> JSONResponse:
    """507 for a request that could not be written for want of room: the client may try again."""
    log.error("%s %s refused: storage full (%s)", request.method, request.url.path, exc)
    return error_response(render, 507, STORAGE_FULL_MESSAGE)


def shaped_route(render: ErrorRenderer) -> type[APIRoute]:
    """A route class whose routes answer errors with `render`: a dialect's router is built with it."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                return await shaped(render, request, handler)

            return handle

    return ShapedRoute


ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def add_fallbacks(router: APIRouter, *paths: str) -> None:
    """Claim `paths` (under the router's prefix; `{rest:path}` for a subtree) for the router's
    dialect: what its other routes do not take there is a 405 when one of them has the path for
    another method, else a 404, in the router's shape. Add them after the router's routes."""

    async def not_served(request: Request) -> Response:
        allowed = sorted(
            {
                method
                for route in router.routes
                if isinstance(route, Route)
                and route.endpoint is not not_served
                and route.methods
                and route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods
            }
        )
        if allowed:
            raise StarletteHTTPException(405, "Method Not Allowed", headers={"Allow": ", ".join(allowed)})
        raise StarletteHTTPException(404, "Not Found")

    for path in paths:
        router.add_api_route(path, not_served, methods=ANY_METHOD, include_in_schema=False)


def install_error_handlers(app: FastAPI) -> None:
    """The service's own shape for its own routes and for requests no route matched."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(detail_body, exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(detail_body, 422, validation_detail(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only what api/guard.py did not answer first: Starlette re-raises it, and uvicorn drops the connection.
        return unexpected_error_response(detail_body, request, exc)
