"""SSRF guard for caller-supplied URLs (webhooks now, image downloads later).

Only http and https. Every address a host name resolves to is checked, and the request is then sent
to an address that was checked (the Host header and TLS SNI keep the name), so DNS rebinding has no
window. Addresses inside IPv6 wrappers (IPv4-mapped, IPv4-compatible, 6to4, NAT64) are unwrapped
and judged as the IPv4 address they carry, because Python's `is_global` misses some of them.

`allow_private` lets loopback and private ranges through (a receiver on the same machine or LAN);
link-local, cloud metadata and the other never-routable ranges stay blocked whatever it says. Each
response says whether the address it came from is private (`from_private_address`), so that callers
can keep what a private host answered to themselves: that answer is a view into the operator's
network, not the caller's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: (host, port) -> every address the host resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NETWORKS = ipaddress.ip_network
# Blocked whatever allow_private says.
NEVER_ALLOWED = [
    (_NETWORKS("0.0.0.0/8"), "an unspecified address"),
    (_NETWORKS("169.254.0.0/16"), "a link-local address (cloud metadata lives here)"),
    (_NETWORKS("192.0.0.0/24"), "an IETF protocol-assignment address"),
    (_NETWORKS("192.0.2.0/24"), "a documentation address"),
    (_NETWORKS("198.51.100.0/24"), "a documentation address"),
    (_NETWORKS("203.0.113.0/24"), "a documentation address"),
    (_NETWORKS("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_NETWORKS("198.18.0.0/15"), "a benchmarking address"),
    (_NETWORKS("224.0.0.0/4"), "a multicast address"),
    (_NETWORKS("240.0.0.0/4"), "a reserved address"),
    (_NETWORKS("::/128"), "an unspecified address"),
    (_NETWORKS("fe80::/10"), "a link-local address"),
    (_NETWORKS("fd00:ec2::254/128"), "a cloud metadata address"),
    (_NETWORKS("ff00::/8"), "a multicast address"),
    (_NETWORKS("100::/64"), "a discard-only address"),
    (_NETWORKS("2001:db8::/32"), "a documentation address"),
    (_NETWORKS("2001::/32"), "a Teredo address"),
    (_NETWORKS("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_NETWORKS("5f00::/16"), "an SRv6 address"),
]
# Blocked unless allow_private.
PRIVATE = [
    (_NETWORKS("127.0.0.0/8"), "a loopback address"),
    (_NETWORKS("10.0.0.0/8"), "a private address"),
    (_NETWORKS("172.16.0.0/12"), "a private address"),
    (_NETWORKS("192.168.0.0/16"), "a private address"),
    (_NETWORKS("100.64.0.0/10"), "a carrier-grade NAT address"),
    (_NETWORKS("::1/128"), "a loopback address"),
    (_NETWORKS("fc00::/7"), "a unique-local (private) address"),
]
_NAT64 = _NETWORKS("64:ff9b::/96")
_IPV4_COMPATIBLE = _NETWORKS("::/96")


#: Response extension set by GuardedTransport: whether the address dialled is loopback or private.
PRIVATE_ADDRESS = "private_address"


class BlockedURL(ValueError):
    """The URL may not be fetched; the message says why in words a caller can act on."""


class BlockedRequest(httpx.ConnectError):
    """The guard refused to dial: an httpx error, so a client sees it as a connection it could not make."""


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def blocked_reason(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why this address may not be contacted, or None if it may."""
    inner = unwrap(address)
    shown = str(address) if inner == address else f"{address} (which carries {inner})"
    for candidate in {address, inner}:
        for network, reason in NEVER_ALLOWED:
            if candidate.version == network.version and candidate in network:
                return f"{shown} is {reason}"
        for network, reason in PRIVATE:
            if candidate.version == network.version and candidate in network:
                return None if allow_private else f"{shown} is {reason}"
    if not inner.is_global:
        return f"{shown} is not a public address"
    return None


def is_private(address: IPAddress) -> bool:
    """Whether only allow_private lets this address through (loopback, private ranges, CGNAT)."""
    return blocked_reason(address, allow_private=False) is not None


def from_private_address(response: httpx.Response) -> bool:
    """Whether a response came from a loopback or private address. A response that did not pass
    through the guard (it cannot say) counts as private: its answer is not shown to callers."""
    return bool(response.extensions.get(PRIVATE_ADDRESS, True))


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_target(url: str) -> Target:
    """Scheme, host and port of a URL we might fetch; BlockedURL for anything that is not http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BlockedURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise BlockedURL("only http and https URLs are allowed")
    if not parts.hostname:
        raise BlockedURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BlockedURL("URLs with credentials are not allowed")
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> list[str]:
    """Every address the URL's host resolves to, once each of them has passed the guard."""
    target = parse_target(url)
    literal = literal_address(target.host)
    if literal is not None:
        answers = [str(literal)]
    else:
        try:
            answers = await resolver(target.host, target.port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode (an empty label, say)
            raise BlockedURL(f"cannot resolve {target.host}: {exc}") from None
        if not answers:
            raise BlockedURL(f"{target.host} resolves to no address")
    for answer in answers:
        reason = blocked_reason(ipaddress.ip_address(answer.split("%")[0]), allow_private=allow_private)
        if reason is not None:
            raise BlockedURL(reason if literal is not None else f"{target.host} resolves to {answer}: {reason}")
    return answers


class GuardedTransport(httpx.AsyncBaseTransport):
    """Sends each request to an address that passed the guard, keeping the name for Host and SNI."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver = system_resolver,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            addresses = await checked_addresses(
                str(request.url), allow_private=self.allow_private, resolver=self.resolver
            )
        except BlockedURL as exc:
            raise BlockedRequest(f"blocked: {exc}", request=request) from None
        host = request.url.host
        request.url = request.url.copy_with(host=addresses[0])  # the Host header keeps the name
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        response = await self.inner.handle_async_request(request)
        response.extensions[PRIVATE_ADDRESS] = is_private(ipaddress.ip_address(addresses[0].split("%")[0]))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
