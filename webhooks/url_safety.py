"""Which webhook URLs the backend may POST to: https only (http where WEBHOOK_ALLOW_HTTP is set,
for local development), and never a host that resolves to a private, loopback, link-local,
multicast, reserved or unspecified address (unless WEBHOOK_ALLOW_PRIVATE_ADDRESSES): an
operator's URL must not turn the worker into a client of the internal network.

Checked when an endpoint is saved (the console form) and again before every delivery (DNS can
change): `resolve_target` returns the checked addresses and the delivery connects to one of
them, so a name that resolves differently a moment later cannot slip past the check.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings


class UnsafeWebhookUrl(ValueError):
    """The URL may not receive webhooks; the message says why, for the operator."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # the name as written (Host header, TLS server name)
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]  # the checked IP addresses `host` resolved to


def _refused_range(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:  # shared address space (100.64/10), benchmarking, ...
        return "non-global"
    return None


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an allowed-scheme URL, or UnsafeWebhookUrl."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookUrl(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not settings.WEBHOOK_ALLOW_HTTP:
        raise UnsafeWebhookUrl("only https:// URLs receive webhooks (http:// needs WEBHOOK_ALLOW_HTTP, "
                               "for local development)")
    if scheme not in ("https", "http"):
        raise UnsafeWebhookUrl("only https:// URLs receive webhooks")
    if not parts.hostname:
        raise UnsafeWebhookUrl("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("the URL must not carry a user name or password (the signature authenticates)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


def resolve_target(url: str) -> Target:
    """Parse, resolve and check `url`; raises UnsafeWebhookUrl naming the reason."""
    scheme, host, port, path = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookUrl(f"the host {host} does not resolve: {exc}") from None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    if not settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES:
        for address in addresses:
            refused = _refused_range(ipaddress.ip_address(address.split("%", 1)[0]))
            if refused:
                raise UnsafeWebhookUrl(
                    f"{host} resolves to {address}, a {refused} address: webhooks go to public addresses only "
                    "(WEBHOOK_ALLOW_PRIVATE_ADDRESSES allows others, for development and tests)"
                )
    return Target(scheme, host, port, path, addresses)
