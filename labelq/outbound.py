"""Requests labelq makes to URLs its users give (webhooks): to the public internet only.

The host is resolved here and every address it resolves to is checked: loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified addresses
are refused unless the operator allows them (`LABELQ_WEBHOOK_ALLOW`, networks in CIDR form).
The connection goes to the address that was checked (the Host header and TLS name stay the
URL's), so a name that resolves elsewhere a second time (DNS rebinding) changes nothing.
Redirects are not followed, and the whole request, resolution included, has one deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from labelq.errors import InputError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A URL labelq will not send to."""


@dataclass(frozen=True)
class Policy:
    allow: tuple[Network, ...] = field(default_factory=tuple)
    deadline: float = 10.0

    @classmethod
    def of(cls, allow: list[str], deadline: float) -> Policy:
        return cls(tuple(ipaddress.ip_network(a, strict=False) for a in allow), deadline)


def _public(address: Address) -> bool:
    return address.is_global and not address.is_multicast


def check_address(address: Address, policy: Policy) -> None:
    if _public(address) or any(address in network for network in policy.allow):
        return
    kind = next(
        (
            k
            for k in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified")
            if getattr(address, f"is_{k}")
        ),
        "non-public",
    )
    raise Refused(f"the host resolves to a {kind.replace('_', '-')} address, which is refused")


def check_url(url: str, policy: Policy, field: str) -> None:
    """What can be told of a URL before any request: http(s), a host, no credentials, and a
    literal address the policy refuses (a host name is checked when it is resolved)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"not a URL: {exc}", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("an http(s) URL with a host", field=field)
    if parts.username or parts.password:
        raise InputError("no credentials in the URL: events are signed", field=field)
    del port
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    try:
        check_address(literal, policy)
    except Refused as exc:
        raise InputError(str(exc), field=field) from None


async def _resolve(host: str, port: int) -> list[Address]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def _post(url: str, body: bytes, headers: dict[str, str], policy: Policy) -> int:
    import httpx

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await _resolve(host, port)
    if not addresses:
        raise Refused("the host does not resolve")
    for address in addresses:  # every address: a name may not hide one private among many
        check_address(address, policy)
    target = f"[{addresses[0]}]" if addresses[0].version == 6 else str(addresses[0])
    pinned = parts._replace(netloc=f"{target}:{port}").geturl()
    shown_host = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        response = await client.post(
            pinned,
            content=body,
            headers={**headers, "Host": shown_host},
            extensions=extensions,
            timeout=policy.deadline,
        )
    return response.status_code


def post(
    url: str, body: bytes, headers: dict[str, str], policy: Policy
) -> tuple[int | None, str | None]:
    """POST `body` to `url` under `policy`: (status, None) for a 2xx, else (status or None,
    what went wrong). Never raises for the receiver's faults."""
    import httpx

    try:
        status = asyncio.run(asyncio.wait_for(_post(url, body, headers, policy), policy.deadline))
    except Refused as exc:
        return None, f"refused: {exc}"
    except TimeoutError:
        return None, f"no answer within {policy.deadline:g} s"
    except (httpx.HTTPError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if 300 <= status < 400:
        return status, f"answered {status}: redirects are not followed"
    if status >= 300:
        return status, f"answered {status}"
    return status, None
