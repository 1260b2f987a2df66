"""What the image fetcher may do: schemes, hosts, sizes and time limits, in one immutable value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    allow_http: bool = True
    allow_hosts: tuple[str, ...] = ()  # empty: any public host; otherwise only these
    deny_hosts: tuple[str, ...] = ()
    # Hosts (names or IP literals as written in the URL) that may resolve to non-public addresses.
    private_hosts: tuple[str, ...] = ()
    media_dir: str | None = None  # enables file: URLs inside this folder only
    connect_timeout_s: float = 5.0
    fetch_timeout_s: float = 20.0  # total: DNS, connect, every redirect and the body
    max_bytes: int = 20 * 1024 * 1024  # encoded size, for fetched bodies, data URLs and files alike
    max_redirects: int = 3
    max_source_pixels: int = 40_000_000  # decompression-bomb bound, checked from the header
    cache_entries: int = 64


def normalize_host(host: str) -> str:
    """The comparable form of a host: lower case, no trailing dot, no IPv6 brackets, IDNA-encoded."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # an unencodable pattern simply never matches an (always ASCII) URL host
    return host


def host_matches(host: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether `host` matches any pattern: an exact host, or "*.example.com" for its subdomains only."""
    host = normalize_host(host)
    if not host:
        return False
    for pattern in patterns:
        if pattern.strip().startswith("*."):
            suffix = normalize_host(pattern.strip()[2:])
            if suffix and host.endswith("." + suffix):
                return True
        elif host == normalize_host(pattern):
            return True
    return False
