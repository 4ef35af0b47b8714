"""fal's server proxy at `/api/fal/proxy`, so that `fal.config({proxyUrl})` alone points fal's
JavaScript client at this server.

With `proxyUrl` set, the client sends each request (same method, headers and body) to that URL and
names the one it meant in `x-fal-target-url`. fal's own proxy forwards it to fal with a secret key;
this server is the fal endpoint, so the request is answered here, in process, by the route the
target names:

    https://queue.fal.run/{app}[/...]          -> /{app}[/...]        the queue: submit, status, result
    https://fal.run/{app}[/...]                -> /run/{app}[/...]    the sync host (`fal.run`, `fal.stream`)
    https://rest.fal.ai/storage/...            -> /storage/...        uploads (rest.alpha.fal.ai too)
    http(s)://{this server}/{path}             -> /{path}             URLs it gave out (status_url, ...)

The query string is the target's. Any other host is a 412 in fal's error shape (what fal's proxy
answers), a missing or unreadable header a 400: nothing is ever fetched from elsewhere, so this is
not an open proxy. The request then passes every check a direct one does (Host, cross-site, the API
key it carries) and gets the route's own answer, streams included.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from hidream_service.api.errors import detail_body

PROXY_PATH = "/api/fal/proxy"
TARGET_URL_HEADER = "x-fal-target-url"

#: fal's hosts that the client may name, and where their paths live on this server.
FAL_HOSTS = {
    "queue.fal.run": "",
    "fal.run": "/run",
    "rest.fal.ai": "",
    "rest.alpha.fal.ai": "",
}
#: The paths of fal's REST hosts that this server answers: its storage uploads.
REST_HOSTS = frozenset({"rest.fal.ai", "rest.alpha.fal.ai"})
REST_PATH_PREFIX = "/storage/"

_DEFAULT_PORTS = {"http": "80", "https": "443"}
# Characters a path or query keeps as they are when re-encoded (RFC 3986 pchar, plus '/' and '%').
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_TARGET_HEADER_BYTES = TARGET_URL_HEADER.encode()


class FalProxy:
    """ASGI middleware: a request to PROXY_PATH is rewritten to the path its target names, then
    handed to the app as if it had been sent there (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, public_url: str | None = None) -> None:
        self.app = app
        public = urlsplit(public_url) if public_url else None
        self.public_base = (_netloc(public.scheme, public.netloc), public.path.rstrip("/")) if public else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) != PROXY_PATH:
            await self.app(scope, receive, send)
            return
        try:
            path, query = self._local_target(scope)
        except _Refusal as refusal:
            status, body = detail_body(refusal.status, refusal.message)
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        prefix = root_path if scope["path"].startswith(root_path) else ""
        rewritten = {
            **scope,
            "path": prefix + unquote(path),
            "raw_path": (prefix + quote(path, safe=_PATH_SAFE)).encode("ascii"),
            "query_string": quote(query, safe=_QUERY_SAFE).encode("ascii"),
            "headers": [(name, value) for name, value in scope["headers"] if name.lower() != _TARGET_HEADER_BYTES],
        }
        await self.app(rewritten, receive, send)

    def _local_target(self, scope: Scope) -> tuple[str, str]:
        """The path (percent-encoded, as sent) and query on this server that the request's target
        names; raises _Refusal for anything else."""
        headers = Headers(scope=scope)
        targets = headers.getlist(TARGET_URL_HEADER)
        if len(targets) != 1:
            raise _Refusal(400, f"a request to {PROXY_PATH} names the URL it is for in one {TARGET_URL_HEADER} header")
        try:
            parts = urlsplit(targets[0].strip())
        except ValueError:
            raise _Refusal(400, f"{TARGET_URL_HEADER} is not a URL") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise _Refusal(400, f"{TARGET_URL_HEADER} is not an http(s) URL")
        netloc = _netloc(parts.scheme, parts.netloc)
        path = parts.path or "/"
        if netloc in FAL_HOSTS and (netloc not in REST_HOSTS or path.startswith(REST_PATH_PREFIX)):
            return FAL_HOSTS[netloc] + path, parts.query
        # This server's own URLs: by the name the request used, or by its public URL.
        own_bases = [(_netloc(scope["scheme"], headers.get("host", "")), scope.get("root_path", "").rstrip("/"))]
        if self.public_base is not None:
            own_bases.append(self.public_base)
        for base_netloc, base_path in own_bases:
            if netloc == base_netloc and (path == base_path or path.startswith(base_path + "/")):
                return path[len(base_path) :] or "/", parts.query
        served = ", ".join(sorted(FAL_HOSTS))
        raise _Refusal(
            412,
            f"{PROXY_PATH} answers for fal's hosts ({served}; on rest hosts only {REST_PATH_PREFIX}) and this "
            f"server's own URLs, not for {parts.netloc}{path}: it fetches nothing from elsewhere",
        )


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the root path an ASGI server or a mount put in front."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


def _netloc(scheme: str, netloc: str) -> str:
    """'Queue.fal.run:443' -> 'queue.fal.run': lower case, without the scheme's own port."""
    host, _, port = netloc.lower().rpartition(":") if not netloc.endswith("]") else (netloc.lower(), "", "")
    if not host:
        return netloc.lower()
    return host if port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
