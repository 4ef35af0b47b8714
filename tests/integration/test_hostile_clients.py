"""Unfriendly clients against a live server: a web page on another site, a page whose DNS name was
rebound to this machine, inputs that used to make the server fail, and clients that send slowly."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from hidream_service.config import Settings
from hidream_service.server import create_app
from tests.integration.browser import PageWatch, open_page
from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, serving

#: Small enough for the slow-client test to see the deadlines pass within seconds.
DEADLINE_SECONDS = 1


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`hidream serve` as the README starts it: no keys, on loopback (hidream/noop only)."""
    env = {
        "HIDREAM_WEBHOOK_SECRET": "",  # generated, so that a rotation would change it
        "HIDREAM_REQUEST_HEADER_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
        "HIDREAM_REQUEST_BODY_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
    }
    with ServerProcess(tmp_path_factory.mktemp("hostile"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An app with API keys, served in this process on loopback."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("hostile-keyed"), api_keys=["k1"])
    with serving(create_app(settings, start_workers=False)) as url:
        yield url


def shape_of(body: dict[str, Any]) -> str:
    """Which dialect's error shape a body has (api/errors.py)."""
    keys = set(body)
    if {"title", "detail", "status"} <= keys:
        return "replicate"
    return {
        frozenset({"detail"}): "fal",
        frozenset({"error"}): "openai",
        frozenset({"code", "message", "data"}): "wavespeed",
    }[frozenset(keys)]


def secret(server: ServerProcess) -> str:
    value: str = httpx.get(f"{server.url}/v1/webhooks/default/secret").json()["key"]
    return value


def job_count(server: ServerProcess) -> int:
    return len(httpx.get(f"{server.url}/v1/requests", params={"limit": 100}).json()["requests"])


# -- A page whose DNS name now points at this machine (DNS rebinding) ---------------------------------


@pytest.mark.parametrize(
    ("method", "path", "shape"),
    [
        ("GET", "/v1/webhooks/default/secret", "replicate"),
        ("POST", "/v1/images/generations", "openai"),
        ("GET", "/api/v3/webhook/secret", "wavespeed"),
        ("GET", "/v1/requests", "fal"),
    ],
)
def test_a_request_naming_another_host_is_refused_on_a_loopback_bind(
    open_server: ServerProcess, method: str, path: str, shape: str
) -> None:
    response = httpx.request(method, f"{open_server.url}{path}", headers={"Host": "rebound.example:8000"}, json={})

    assert response.status_code == 400
    assert shape_of(response.json()) == shape
    assert "HIDREAM_ALLOWED_HOSTS" in response.text


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:1234", "LOCALHOST"])
def test_this_machine_s_own_names_are_answered_on_any_port(open_server: ServerProcess, host: str) -> None:
    assert httpx.get(f"{open_server.url}/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_adds_names_and_a_star_allows_any(tmp_path: Path) -> None:
    named = Settings(data_dir=tmp_path / "named", allowed_hosts=["images.example.com"])
    anything = Settings(data_dir=tmp_path / "any", allowed_hosts=["*"])

    with serving(create_app(named, start_workers=False)) as url:
        assert httpx.get(f"{url}/health", headers={"Host": "images.example.com:443"}).status_code == 200
        assert httpx.get(f"{url}/health", headers={"Host": "other.example.com"}).status_code == 400
    with serving(create_app(anything, start_workers=False)) as url:
        assert httpx.get(f"{url}/health", headers={"Host": "other.example.com"}).status_code == 200
        malformed = httpx.get(f"{url}/v1/models", headers={"Host": "a b"})
        assert malformed.status_code == 400 and shape_of(malformed.json()) == "openai"


# -- A page on another site --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "browser_headers",
    [
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},  # a sandboxed frame, or a file opened from disk
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_site_request_changes_nothing(open_server: ServerProcess, browser_headers: dict[str, str]) -> None:
    before_secret, before_jobs = secret(open_server), job_count(open_server)
    text = {**browser_headers, "Content-Type": "text/plain"}

    rotate = httpx.post(f"{open_server.url}/v1/webhooks/default/secret/rotate", headers=text, content=b"")
    submit = httpx.post(f"{open_server.url}/hidream/noop", headers=text, content=b'{"prompt": "x"}')
    generate = httpx.post(f"{open_server.url}/v1/images/generations", headers=browser_headers, json={"prompt": "x"})

    assert (rotate.status_code, shape_of(rotate.json())) == (403, "replicate")
    assert (submit.status_code, shape_of(submit.json())) == (403, "fal")
    assert (generate.status_code, shape_of(generate.json())) == (403, "openai")
    assert secret(open_server) == before_secret
    assert job_count(open_server) == before_jobs


def test_the_server_s_own_origin_and_plain_clients_may(open_server: ServerProcess) -> None:
    own = {"Origin": open_server.url, "Sec-Fetch-Site": "same-origin"}

    from_its_page = httpx.post(f"{open_server.url}/hidream/noop", headers=own, json={"prompt": "x"})
    from_a_client = httpx.post(f"{open_server.url}/hidream/noop", json={"prompt": "x"})
    reading = httpx.get(f"{open_server.url}/v1/requests", headers={"Origin": "http://attacker.example"})

    assert from_its_page.status_code == 200, from_its_page.text
    assert from_a_client.status_code == 200, from_a_client.text
    assert reading.status_code == 200  # a read: without CORS headers the page cannot see the answer


ATTACK_PAGE = """<!doctype html><script>
window.attack = async (api) => {
  const send = (path, body) => fetch(api + path, {method: "POST", mode: "no-cors", body,
                                                  headers: {"Content-Type": "text/plain"}});
  await send("/v1/webhooks/default/secret/rotate", "");
  await send("/hidream/noop", JSON.stringify({prompt: "sent from another site"}));
  return "sent";
};
</script>"""


def test_a_page_on_another_site_in_a_real_browser_rotates_nothing_and_queues_nothing(
    browser: Browser, watch: PageWatch, open_server: ServerProcess
) -> None:
    """Chromium, from a page at localhost:<port> (another site than 127.0.0.1), sends what CORS lets
    any page send without asking: POSTs of text/plain."""
    attacker = WebhookReceiver(
        files={"/attack.html": Reply(200, {"Content-Type": "text/html"}, body=ATTACK_PAGE.encode())}
    )
    before_secret, before_jobs = secret(open_server), job_count(open_server)

    with attacker:
        page = open_page(browser, f"http://localhost:{attacker.port}/attack.html", watch)
        assert page.evaluate("api => window.attack(api)", open_server.url) == "sent"

    assert secret(open_server) == before_secret
    assert job_count(open_server) == before_jobs


# -- JSON routes take JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/hidream/noop", "fal"),
        ("/v1/models/hidream/noop/predictions", "replicate"),
        ("/v1/images/generations", "openai"),
        ("/api/v3/media/uploads", "wavespeed"),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_route_refuses_another_media_type_in_its_dialect_s_shape(
    open_server: ServerProcess, path: str, shape: str, content_type: str | None
) -> None:
    before = job_count(open_server)
    headers = {"Content-Type": content_type} if content_type else {}

    response = httpx.post(f"{open_server.url}{path}", headers=headers, content=b'{"prompt": "x", "input": {}}')

    assert response.status_code == 415
    assert shape_of(response.json()) == shape
    assert job_count(open_server) == before


# -- Inputs that were each a 500, and cost the client its connection -------------------------------

DEEP = "[" * 2000 + "]" * 2000
DIGITS = "1" * 5000


def over_one_connection(base_url: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """Send the request, then GET /health on the same connection: that second answer shows the
    server kept the connection (http.client reconnects only when told the connection closes, and
    then `sock` would change)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        opened = connection.sock
        response = connection.getresponse()
        answer = response.status, json.loads(response.read())
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        assert connection.sock is opened, "the server closed the connection"
        return answer
    finally:
        connection.close()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "shape"),
    [
        ("POST", "/hidream/noop", f'{{"prompt": {DEEP}}}', JSON, 422, "fal"),
        ("POST", "/v1/images/generations", f'{{"prompt": "x", "n": {DEEP}}}', JSON, 400, "openai"),
        ("POST", "/storage/upload/initiate", DEEP, JSON, 422, "fal"),
        ("POST", "/hidream/noop", '{"prompt": "a\\ud800b"}', JSON, 422, "fal"),
        ("POST", "/v1/models/hidream/noop/predictions", '{"input": {"prompt": "a\\udfffb"}}', JSON, 422, "replicate"),
        (
            "POST",
            "/v1/predictions",
            '{"version": "hidream/noop", "input": {}, "webhook": "http://127.0.0.1/a\\ud800b"}',
            JSON,
            422,
            "replicate",
        ),
        ("GET", "/files/" + "a" * 300 + "/x.png", "", {}, 404, "fal"),
        ("GET", "/files/upload-x/" + "b" * 300 + ".png", "", {}, 404, "fal"),
        ("POST", "/files/upload", "x", {"Authorization": f"Bearer -.{DIGITS}.x"}, 200, None),
        ("PUT", f"/storage/upload/u.{DIGITS}.m/x.png", "x", {}, 404, "fal"),
    ],
    ids=[
        "deep-fal",
        "deep-openai",
        "deep-storage",
        "surrogate-prompt-fal",
        "surrogate-prompt-replicate",
        "surrogate-webhook-replicate",
        "long-request-id",
        "long-file-name",
        "token-of-5000-digits",
        "upload-ticket-of-5000-digits",
    ],
)
def test_inputs_that_failed_the_server_are_a_4xx_in_shape_on_a_connection_kept_alive(
    open_server: ServerProcess,
    method: str,
    path: str,
    body: str,
    headers: dict[str, str],
    status: int,
    shape: str | None,
) -> None:
    answered, payload = over_one_connection(open_server.url, method, path, body.encode(), headers)

    assert answered == status, payload
    if shape is not None:
        assert shape_of(payload) == shape


def test_an_upload_named_with_two_dots_is_stored_under_a_clean_name(open_server: ServerProcess) -> None:
    uploaded = httpx.post(f"{open_server.url}/files/upload", content=b"data", headers={"X-Fal-File-Name": "a..png"})
    ticket = httpx.post(f"{open_server.url}/storage/upload/initiate", json={"file_name": "b..png"}).json()

    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["access_url"].endswith("/a.png")
    assert ticket["upload_url"].endswith("/b.png")
    assert httpx.put(ticket["upload_url"], content=b"data").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "shape"),
    [
        ("GET", "/v1/predictions", {"Authorization": f"Token {DIGITS}"}, 401, "replicate"),
        ("GET", "/v1/requests", {"Authorization": f"Key {DIGITS}"}, 401, "fal"),
        ("POST", "/files/upload", {"Authorization": f"Bearer -.{DIGITS}.x"}, 401, "fal"),
        ("POST", "/files/upload", {"Authorization": f"Bearer {DIGITS}.{DIGITS}"}, 401, "fal"),
        (
            "POST",
            "/v1/predictions",
            {"Authorization": "Token k1", "Prefer": f"wait={DIGITS}", **JSON},
            400,
            "replicate",
        ),
    ],
    ids=["token-replicate", "key-fal", "storage-token", "storage-token-digits", "prefer-wait"],
)
def test_an_authorization_of_5000_digits_is_a_401_in_shape(
    keyed_url: str, method: str, path: str, headers: dict[str, str], status: int, shape: str
) -> None:
    body = b'{"version": "hidream/noop", "input": {}}'
    answered, payload = over_one_connection(keyed_url, method, path, body, headers)

    assert answered == status, payload
    assert shape_of(payload) == shape


def test_an_unexpected_error_is_a_500_on_a_connection_kept_alive(tmp_path: Path) -> None:
    """Starlette answers an exception no handler took, then re-raises it, and uvicorn drops the
    connection; the guard answers it instead."""
    app = create_app(Settings(data_dir=tmp_path), start_workers=False)

    @app.get("/fails")
    async def fails() -> None:
        raise RuntimeError("a bug")

    app.router.routes.insert(0, app.router.routes.pop())  # ahead of fal's catch-all 404 for any GET

    with serving(app) as url:
        answered = over_one_connection(url, "GET", "/fails", b"", {})

    assert answered == (500, {"detail": "internal server error"})


# -- Clients that send slowly (slow-loris) -------------------------------------------------------------

SLOW_CLIENTS_OF_EACH_KIND = 30
HEAD_NEVER_ENDS = b"POST /hidream/noop HTTP/1.1\r\nHost: 127.0.0.1\r\n"
BODY_NEVER_ENDS = (
    b"POST /hidream/noop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b'Content-Length: 100\r\n\r\n{"prompt": '
)
BODY_NOBODY_READS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
NEXT_HEAD_NEVER_ENDS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\n"


def slow_connections(server: ServerProcess, first_bytes: bytes) -> list[socket.socket]:
    host, port = server.url.removeprefix("http://").split(":")
    opened = []
    for _ in range(SLOW_CLIENTS_OF_EACH_KIND):
        connection = socket.create_connection((host, int(port)), timeout=30)
        connection.sendall(first_bytes)
        opened.append(connection)
    return opened


def until_closed(connection: socket.socket) -> bytes:
    """All the server sends until it closes the connection (the socket's timeout ends a wait for
    one that never closes)."""
    with connection:
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def test_slow_clients_are_closed_after_the_deadlines_and_others_still_served(open_server: ServerProcess) -> None:
    head_never_ends = slow_connections(open_server, HEAD_NEVER_ENDS)
    body_never_ends = slow_connections(open_server, BODY_NEVER_ENDS)
    body_nobody_reads = slow_connections(open_server, BODY_NOBODY_READS)
    next_head_never_ends = slow_connections(open_server, NEXT_HEAD_NEVER_ENDS)

    assert httpx.get(f"{open_server.url}/health", timeout=10).status_code == 200
    for connection in head_never_ends:
        assert until_closed(connection).startswith(b"HTTP/1.1 408 ")
    for connection in body_never_ends:
        head, _, body = until_closed(connection).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert "stalled" in json.loads(body)["detail"]
    for connection in body_nobody_reads:
        assert until_closed(connection).startswith(b"HTTP/1.1 200 ")  # answered, then not kept waiting
    for connection in next_head_never_ends:
        first, _, rest = until_closed(connection).partition(b"HTTP/1.1 408 ")
        assert first.startswith(b"HTTP/1.1 200 ") and rest
    assert httpx.get(f"{open_server.url}/health", timeout=10).status_code == 200
