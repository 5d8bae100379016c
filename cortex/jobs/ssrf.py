"""The SSRF guard: a webhook URL may only point at public addresses (plus CORTEX_WEBHOOK_ALLOW_CIDRS)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from cortex.errors import ConfigError, WebhookRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> addresses as text
AsyncResolver = Callable[[str, int], Awaitable[Sequence[str]]]

ALLOW_CIDRS_VARIABLE = "CORTEX_WEBHOOK_ALLOW_CIDRS"
RESOLVE_TIMEOUT = 10.0  # seconds; a submit waits for this at most
_DEFAULT_PORTS = {"http": 80, "https": 443}
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LEGACY_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


@dataclass(frozen=True)
class CheckedURL:
    """A webhook URL whose host resolved to public (or allowed) addresses only.

    Delivery connects to `address` itself, so a DNS answer that changes after the check (DNS
    rebinding) cannot redirect the request; the original host still goes in `Host` and TLS SNI.
    """

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    explicit_port: bool
    path: str  # path and query, never empty
    address: IPAddress  # the first resolved address: the one to connect to
    addresses: tuple[IPAddress, ...]

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.explicit_port else host

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: TLS verifies the certificate of the host, not of the IP."""
        if self.scheme != "https" or _ip_literal(self.host) is not None:
            return {}
        return {"sni_hostname": self.host}


def parse_allow_cidrs(text: str, label: str = ALLOW_CIDRS_VARIABLE) -> list[IPNetwork]:
    """`127.0.0.0/8,::1/128` -> networks a webhook may target even though they are not public."""
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ConfigError(
                f"{label}: expected comma-separated networks such as 127.0.0.0/8,::1/128, "
                f"got {text!r} ({exc})"
            ) from exc
    return networks


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, IPv4 and IPv6 (blocking: see resolve_host_async)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_host_async(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_webhook_url(
    url: str, allow: Sequence[IPNetwork] = (), resolve: Resolver = resolve_host
) -> CheckedURL:
    """The URL with the address to connect to; WebhookRefusedError if it is malformed, cannot be
    resolved, or any address it resolves to is not public and not in `allow`."""
    parts = _split(url)
    literal = _ip_literal(parts.host)
    if literal is not None:
        return _decide(parts, [literal], allow)
    try:
        found = resolve(parts.host, parts.port)
    except (OSError, UnicodeError) as exc:
        raise _unresolvable(parts, exc) from exc
    return _decide(parts, _addresses(found), allow)


async def check_webhook_url_async(
    url: str, allow: Sequence[IPNetwork] = (), resolve: AsyncResolver = resolve_host_async
) -> CheckedURL:
    """check_webhook_url for the event loop: the host is resolved without blocking it."""
    parts = _split(url)
    literal = _ip_literal(parts.host)
    if literal is not None:
        return _decide(parts, [literal], allow)
    try:
        found = await asyncio.wait_for(resolve(parts.host, parts.port), RESOLVE_TIMEOUT)
    except (OSError, UnicodeError, asyncio.TimeoutError) as exc:
        raise _unresolvable(parts, exc) from exc
    return _decide(parts, _addresses(found), allow)


@dataclass(frozen=True)
class _Parts:
    url: str
    scheme: str
    host: str
    port: int
    explicit_port: bool
    path: str


def _split(url: str) -> _Parts:
    try:
        split: SplitResult = urlsplit(url)
        port = split.port
    except ValueError as exc:  # unbalanced brackets, a port that is not a number in 0-65535
        raise WebhookRefusedError(f"webhook URL {url!r} is not a valid URL: {exc}") from exc
    scheme = split.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise WebhookRefusedError(f"webhook URL {url!r}: scheme must be http or https, got {scheme!r}")
    if "@" in split.netloc:
        shown = urlunsplit(split._replace(netloc="***@" + split.netloc.rpartition("@")[2]))
        raise WebhookRefusedError(f"webhook URL {shown!r} must not contain a user name or password")
    host = (split.hostname or "").rstrip(".")
    if not host:
        raise WebhookRefusedError(f"webhook URL {url!r} has no host")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise WebhookRefusedError(f"webhook URL {url!r}: {host!r} is not a valid host name") from exc
    path = urlunsplit(("", "", split.path or "/", split.query, ""))
    return _Parts(url, scheme, host, port or _DEFAULT_PORTS[scheme], port is not None, path)


def _ip_literal(host: str) -> IPAddress | None:
    """An IP written in the host: standard forms, and the legacy IPv4 spellings that
    getaddrinfo (inet_aton) accepts: 2130706433, 0x7f.1, 017700000001."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    numbers = [_legacy_number(part) for part in host.split(".")]
    if not 1 <= len(numbers) <= 4 or None in numbers:
        return None
    *leading, last = (n for n in numbers if n is not None)
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(leading)) + last
    return ipaddress.IPv4Address(value)


def _legacy_number(part: str) -> int | None:
    if not _LEGACY_NUMBER.fullmatch(part):
        return None
    if part[:2].lower() == "0x":
        return int(part[2:], 16)
    return int(part, 8) if part.startswith("0") else int(part)


def _addresses(found: Sequence[str]) -> list[IPAddress]:
    # Scope ids (fe80::1%eth0) are kept: ipaddress still classifies the address.
    return [ipaddress.ip_address(text) for text in found]


def _unresolvable(parts: _Parts, exc: BaseException) -> WebhookRefusedError:
    why = str(exc) or type(exc).__name__
    return WebhookRefusedError(f"webhook URL {parts.url!r}: cannot resolve host {parts.host!r} ({why})")


def _decide(parts: _Parts, addresses: list[IPAddress], allow: Sequence[IPNetwork]) -> CheckedURL:
    if not addresses:
        raise _unresolvable(parts, LookupError("no addresses"))
    for address in addresses:
        reason = _refusal_reason(address, allow)
        if reason is not None:
            single = ipaddress.ip_network(str(address).split("%")[0])
            raise WebhookRefusedError(
                f"webhook URL {parts.url!r} points at {address}, {reason}; webhooks may only target "
                f"public addresses. To allow it, add its network to {ALLOW_CIDRS_VARIABLE} "
                f"(e.g. {single.compressed})."
            )
    first = addresses[0]
    # ::ffff:a.b.c.d is a.b.c.d: connect over IPv4, which works without a dual-stack socket.
    target = first.ipv4_mapped if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped else first
    return CheckedURL(
        parts.url, parts.scheme, parts.host, parts.port, parts.explicit_port, parts.path,
        target, tuple(addresses),
    )  # fmt: skip


def _refusal_reason(address: IPAddress, allow: Sequence[IPNetwork]) -> str | None:
    """None when `address` may be targeted, else why not (\"a loopback address\")."""
    embedded = _embedded_ipv4(address)
    if any(address in net or (embedded is not None and embedded in net) for net in allow):
        return None
    if embedded is not None:
        inner = _non_public_reason(embedded)
        if inner is not None:
            return f"which embeds {embedded}, {inner}"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return None  # ::ffff:a.b.c.d is a.b.c.d itself, which is public
    return _non_public_reason(address)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries: mapped, compatible, NAT64 or 6to4."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if (address in _IPV4_COMPATIBLE and int(address) > 1) or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _non_public_reason(address: IPAddress) -> str | None:
    # Order matters: 127.0.0.1 is also "private", 169.254.169.254 also "link-local".
    checks: list[tuple[bool, str]] = [
        (address.is_unspecified, "the unspecified address"),
        (address in _METADATA, "the cloud metadata address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "a site-local address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a globally routable address"),
    ]
    return next((reason for failed, reason in checks if failed), None)
