"""What every request passes on its way to a route, installed by create_app().

`RequestChecks`, a dependency of every route, so that a refusal is in the shape of the dialect the
request was for (a dialect's router renders what its routes raise):

- Host: a malformed Host header is a 400 (RFC 9112, section 3.2). On a loopback bind, or wherever
  HIDREAM_ALLOWED_HOSTS is set, the Host must also name this server (400 otherwise): a web page whose
  DNS name was rebound to 127.0.0.1 names its own, and so cannot use an open API on this machine.
- Cross-site: browsers mark what a page on another site sends (Sec-Fetch-Site, Origin). Such a page
  may POST a form or text/plain anywhere without asking first (no CORS preflight), so a request that
  could change something (any method but GET, HEAD and OPTIONS) and comes from another site is a 403.
  Clients (fal, Replicate, OpenAI, curl) send neither header; the playground sends its own origin.
  JSON routes also refuse any other media type (api/json_body.py, where the body is read).

`RequestGuard`, ASGI middleware around the routes:

- a request body that stalls for longer than request_body_timeout_seconds is a 408, and the
  connection is closed (uvicorn has no such deadline; serving.py bounds the request head);
- an exception no route answered is answered here (api/errors.py says how), not by Starlette's
  outermost middleware, which re-raises it after answering, so that uvicorn drops the connection.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hidream_service.api.errors import detail_body, unexpected_error_response
from hidream_service.config import LOOPBACK_HOSTS, Settings

#: Methods that change nothing here, which a page on another site may send.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Names that reach this machine and no other: only this machine's own pages use them.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(host: str) -> str | None:
    """'Example.com:8000' -> 'example.com', '[::1]:80' -> '::1'; None for what is not a Host value."""
    match = _HOST.fullmatch(host)
    if match is None or (match["port"] and int(match["port"]) > 65535):
        return None
    return match["name"].strip("[]").lower()


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The host names requests may name (any port), or None for any: checked on a loopback bind,
    or wherever HIDREAM_ALLOWED_HOSTS is set ('*' turns the check off)."""
    if "*" in settings.allowed_hosts or (not settings.allowed_hosts and settings.host not in LOOPBACK_HOSTS):
        return None
    names = [*LOOPBACK_NAMES, settings.host, *settings.allowed_hosts]
    if settings.public_url:
        names.append(urlsplit(settings.public_url).netloc)
    return frozenset(host_name(name) or name.strip("[]").lower() for name in names)


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """An Origin (or a base URL) as (scheme, host name, port), the scheme's port when it names none."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


class RequestChecks:
    """The Host and cross-site checks, as a dependency of every route."""

    def __init__(self, settings: Settings) -> None:
        self.hosts = allowed_hosts(settings)
        self.public_origin = _origin_of(settings.public_url) if settings.public_url else None

    async def __call__(self, request: Request) -> None:
        hosts = request.headers.getlist("host")
        if len(hosts) > 1:
            raise HTTPException(400, "a request names one Host")
        name = host_name(hosts[0]) if hosts else None  # HTTP/1.0 may name none
        if hosts and name is None:
            raise HTTPException(400, "the Host header is not a host name or address with an optional port")
        if self.hosts is not None and name is not None and name not in self.hosts:
            raise HTTPException(
                400,
                f"this server does not answer to the host name {name!r}; add it to HIDREAM_ALLOWED_HOSTS "
                "if clients reach it by that name",
            )
        if request.method not in SAFE_METHODS and self._from_another_site(request.headers):
            raise HTTPException(403, "a web page on another site may not send this request (Origin, Sec-Fetch-Site)")

    def _from_another_site(self, headers: Headers) -> bool:
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return True
        origin = headers.get("origin")
        if origin is None:
            return False  # not a browser (or an old one on its own origin)
        page = _origin_of(origin)  # None for "null": a sandboxed frame, or a file opened from disk
        if page is None:
            return True
        scheme, *site = page
        if self.public_origin is not None and site == list(self.public_origin[1:]):
            return False
        match = _HOST.fullmatch(headers.get("host", ""))
        if match is None:
            return True
        # Behind a proxy that ends TLS the page's scheme is not ours; a Host without a port means its port.
        port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
        return [match["name"].strip("[]").lower(), port] != site


class RequestGuard:
    """ASGI middleware: a deadline on each part of a request body, and the last answer to an
    exception (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, body_timeout: float) -> None:
        self.app = app
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._bounded(receive), send_noting_start)
        except Exception as exc:
            if started:
                raise  # half an answer is out: only dropping the connection tells the client
            # Dialect routes answer their own errors; what reaches here is from the service's own routes.
            response = unexpected_error_response(detail_body, Request(scope), exc)
            await response(scope, receive, send)

    def _bounded(self, receive: Receive) -> Receive:
        """`receive`, with a deadline on each part of the request body while more is to come."""
        body_done = False

        async def receive_within_deadline() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()  # past the body: a wait for the client to hang up is no stall
            try:
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body stalled: nothing arrived for {self.body_timeout:g} s",
                    headers={"Connection": "close"},
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_within_deadline
