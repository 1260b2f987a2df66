"""Host names as the image fetcher compares them (its bounds are core.settings.ImageSettings)."""

from __future__ import annotations


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
