"""Which IP addresses an image fetch may connect to: only public unicast ones, unless configured.

Every form that can smuggle an internal address is unwrapped before the check: IPv4-mapped and
IPv4-compatible IPv6, NAT64 (64:ff9b::/96 and 64:ff9b:1::/48), 6to4 (2002::/16) and Teredo. Host
literals in the legacy inet_aton spellings (decimal "2130706433", octal "0177.0.0.1", hex "0x7f.1",
short "127.1") are understood the way the system resolver understands them, and so is the fully qualified
spelling with a trailing dot ("127.0.0.1.", which the resolver would otherwise send to DNS as a name).
Localhost names ("localhost", "*.localhost", RFC 6761) are loopback by definition, never looked up.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
LOOPBACK = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes literally (any IPv4 spelling, or [IPv6]); None for names."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif host.endswith(".") and not host.endswith(".."):
        host = host[:-1]  # the root label: "127.0.0.1." and "0x7f.1." are still those addresses
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_localhost_name(host: str) -> bool:
    """Whether a host name is "localhost" or under it, in any case, with or without the trailing dot: such
    names always mean the loopback addresses (RFC 6761 section 6.3), whatever DNS might say."""
    name = host.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    return name == "localhost" or name.endswith(".localhost")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why a connection to `ip` must be refused, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = refusal_reason(inner)
            return f"an IPv6 form of {inner}, {reason}" if reason else None
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address (this includes cloud metadata services)"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a carrier-grade NAT address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    for refused, reason in checks:
        if refused:
            return reason
    return None
