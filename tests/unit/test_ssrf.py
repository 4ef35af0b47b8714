from __future__ import annotations

import asyncio
import ipaddress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import httpx
import pytest

from webhooks.ssrf import BlockedURL, GuardedTransport, blocked_reason, checked_addresses, from_private_address

ALWAYS_BLOCKED = [
    "169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "0.0.0.0",
    "198.18.0.1",
    "::",
    "fe80::1",
    "fd00:ec2::254",
    "224.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "::ffff:169.254.169.254",
]
PRIVATE = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "::1",
    "fd00::1",
    "::ffff:127.0.0.1",
    "2002:7f00:1::",  # 6to4 carrying 127.0.0.1
    "::127.0.0.1",  # IPv4-compatible form
]
PUBLIC = ["93.184.215.14", "2606:4700:4700::1111", "8.8.8.8", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", ALWAYS_BLOCKED + PRIVATE)
def test_blocked_by_default(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", ALWAYS_BLOCKED)
def test_never_allowed_even_with_private_urls_on(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize("address", PRIVATE)
def test_private_ranges_can_be_allowed(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), allow_private=False) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http:///nohost", "no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://0x7f000001/", "cannot resolve"),
    ],
)
def test_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    async def no_dns(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(BlockedURL, match=reason):
        asyncio.run(checked_addresses(url, allow_private=False, resolver=no_dns))


def test_every_answer_is_checked_not_just_the_first() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    with pytest.raises(BlockedURL, match="resolves to 10.0.0.7"):
        asyncio.run(checked_addresses("https://example.com/", allow_private=False, resolver=mixed))


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.headers.get("host", "").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_checked_address_is_the_one_dialled_and_the_name_is_kept() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    async def local(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=GuardedTransport(allow_private=True, resolver=local)) as client:
            return await client.post(f"http://receiver.test:{port}/hook")

    try:
        response = asyncio.run(post())
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    assert response.text == f"receiver.test:{port}"  # the Host header keeps the name while 127.0.0.1 is dialled
    assert from_private_address(response)  # so its answer is kept from the caller


def test_a_name_idna_cannot_encode_is_refused_not_raised() -> None:
    with pytest.raises(BlockedURL, match="cannot resolve"):
        asyncio.run(checked_addresses("http://a..b.example/hook", allow_private=False))


def test_a_rebinding_answer_to_metadata_is_refused_at_send_time() -> None:
    answers = iter([["93.184.215.14"], ["169.254.169.254"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    async def main() -> None:
        assert await checked_addresses("http://x.test/", allow_private=True, resolver=rebinding)
        transport = GuardedTransport(allow_private=True, resolver=rebinding)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError, match="link-local"):
                await client.post("http://x.test/hook")

    asyncio.run(main())
