"""Fetch image bytes from http(s) (or file:) URLs without becoming an SSRF proxy.

Every hop (the URL and each redirect) is checked the same way: scheme, host lists, then the addresses
the host resolves to. The connection then goes to exactly the address that was checked (the request URL
carries the IP, the Host header and TLS SNI carry the name), so a second DNS answer cannot swap in an
internal address between check and connect.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable

import httpx

from core.settings import ImageSettings

from .addresses import LOOPBACK, IPAddress, is_localhost_name, parse_ip_literal, refusal_reason
from .errors import (
    IMAGE_FETCH_FAILED,
    IMAGE_FETCH_TIMEOUT,
    IMAGE_TOO_LARGE,
    IMAGE_URL_REFUSED,
    INVALID_IMAGE,
    INVALID_IMAGE_URL,
    ImageError,
    clip,
)
from .media_files import read_media_file
from .policy import host_matches
from .sniff import sniff_format

Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS = {301, 302, 303, 307, 308}
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_SNIFF_BYTES = 12  # enough to tell the four formats apart (RIFF....WEBP is the longest signature)
_HEADERS = {"User-Agent": "lodestar-image-fetch", "Accept": "image/*", "Accept-Encoding": "identity"}
_LOCATION = "lodestar.location"  # where a redirect's Location waits for the fetch loop (see _hold_location)


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for host (the default Resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def fetch_image(url: str, policy: ImageSettings, *, resolve: Resolver | None = None,
                      verify: ssl.SSLContext | None = None) -> bytes:
    """The encoded bytes at an https/http/file URL, within the policy's limits; raises ImageError.

    `verify` replaces the default (certifi) TLS trust store, e.g. for an internal CA.
    """
    try:
        async with asyncio.timeout(policy.fetch_timeout_s) as deadline:
            return await _fetch(url, policy, resolve or system_resolve, verify)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ImageError(f"fetching the image at {_show(url)} took longer than {policy.fetch_timeout_s:g} s",
                         IMAGE_FETCH_TIMEOUT) from None


async def _fetch(url: str, policy: ImageSettings, resolve: Resolver, verify: ssl.SSLContext | None) -> bytes:
    current = _parse(url)
    if current.scheme == "file":
        return await read_media_file(url, policy)
    timeout = httpx.Timeout(connect=policy.connect_timeout_s, read=policy.fetch_timeout_s,
                            write=policy.fetch_timeout_s, pool=policy.fetch_timeout_s)
    # One client per fetch and no keep-alive: a pooled connection (keyed by IP) must never be reused
    # for a different host name, whose TLS session would carry the wrong SNI and certificate.
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout,
                                 limits=httpx.Limits(max_keepalive_connections=0),
                                 verify=verify or _default_ssl_context(),
                                 event_hooks={"response": [_hold_location]}) as client:
        for hop in range(policy.max_redirects + 1):
            _check_url(current, policy, redirected=hop > 0)
            addresses = await _checked_addresses(current, policy, resolve, redirected=hop > 0)
            response = await _send(client, current, addresses)
            try:
                status = response.status_code
                location = response.extensions.get(_LOCATION)
                if status in _REDIRECTS and location:
                    try:
                        current = current.join(location.strip())
                    except (httpx.InvalidURL, ValueError):
                        raise ImageError(f"the upstream server redirected to an invalid URL: {_show(location)}",
                                         IMAGE_FETCH_FAILED) from None
                    continue
                if status >= 300 or status < 200:
                    after = f" after redirecting to {_show(current)}" if hop else ""
                    raise ImageError(f"the upstream server answered {status} "
                                     f"{httpx.codes.get_reason_phrase(status)}".rstrip() + after, IMAGE_FETCH_FAILED)
                return await _read_body(response, current, policy.max_bytes)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, current) from None
            finally:
                await response.aclose()
    raise ImageError(f"too many redirects (more than {policy.max_redirects})", IMAGE_FETCH_FAILED)


async def _hold_location(response: httpx.Response) -> None:
    """Take a redirect's Location off the response before httpx reads it.

    httpx builds the next request from a Location even when it does not follow redirects, and fails with
    its own InvalidURL on some (a `data:` URL among them), which would turn a refused redirect into a
    failed fetch. The fetch loop reads the Location here instead and checks the target like any hop."""
    if "location" in response.headers:
        response.extensions[_LOCATION] = response.headers["location"]
        del response.headers["location"]


def _parse(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ImageError(f"the image URL {_show(url)} is not a valid URL", INVALID_IMAGE_URL) from None
    if not parsed.scheme:
        raise ImageError("the image URL has no scheme; use an https:// (or http://) URL or a data: URL",
                         INVALID_IMAGE_URL)
    return parsed


def _check_url(url: httpx.URL, policy: ImageSettings, *, redirected: bool) -> None:
    """Scheme, userinfo, host syntax and host lists; addresses are checked separately."""
    scheme = url.scheme
    if scheme not in ("http", "https"):
        if redirected and scheme in ("file", "data"):
            raise ImageError(f"the upstream server redirected to a {scheme}: URL, which is not allowed",
                             IMAGE_URL_REFUSED)
        if scheme == "data":
            raise ImageError("data: URLs are decoded inline, not fetched", INVALID_IMAGE_URL)
        raise ImageError(f"unsupported image URL scheme {scheme + ':'!r}; use https:, http: or data:",
                         INVALID_IMAGE_URL)
    if scheme == "http" and not policy.allow_http:
        raise ImageError("plain http image URLs are disabled on this server; use https", IMAGE_URL_REFUSED)
    if url.userinfo:
        raise ImageError("image URLs with a user name or password are not allowed", IMAGE_URL_REFUSED)
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise ImageError(f"the image URL {_show(url)} has no host", INVALID_IMAGE_URL)
    if url.port is not None and not 0 < url.port < 65536:
        raise ImageError(f"the image URL's port {url.port} is out of range", INVALID_IMAGE_URL)
    literal = parse_ip_literal(host)
    if literal is None and not _HOST_NAME.match(host):
        raise ImageError(f"the image URL's host {clip(url.host)!r} is not a valid host name", INVALID_IMAGE_URL)
    # Deny lists also match an IP literal's canonical form, so "2130706433" cannot dodge "127.0.0.1".
    if host_matches(host, policy.deny_hosts) or (literal is not None and host_matches(str(literal), policy.deny_hosts)):
        raise ImageError(f"fetching images from {clip(url.host)} is not allowed on this server", IMAGE_URL_REFUSED)
    if policy.allow_hosts and not host_matches(host, policy.allow_hosts):
        raise ImageError(f"{clip(url.host)} is not among the hosts this server fetches images from",
                         IMAGE_URL_REFUSED)


async def _checked_addresses(url: httpx.URL, policy: ImageSettings, resolve: Resolver, *,
                             redirected: bool) -> list[IPAddress]:
    """The addresses to connect to, each vetted; a literal is used as is, a localhost name is loopback, any
    other name is resolved once."""
    host = url.raw_host.decode("ascii")
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    elif is_localhost_name(host):
        addresses = list(LOOPBACK)
    else:
        addresses = await _resolve(host, _port(url), resolve)
    if host_matches(host, policy.private_hosts):
        return addresses
    for address in addresses:
        reason = refusal_reason(address)
        if reason is None:
            continue
        subject = "the redirect target's host" if redirected else "the image URL's host"
        if literal is None:
            subject += f" {clip(url.host)} resolves to"
        elif str(literal) != host:
            subject += f" {host} is"  # an unusual spelling such as 2130706433 or 0x7f.1
        else:
            subject += " is"
        where = f" (redirected to {_show(url)})" if redirected else ""
        raise ImageError(f"{subject} {address}, {reason}; fetching it is not allowed{where}", IMAGE_URL_REFUSED)
    return addresses


async def _resolve(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        answers = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ImageError(f"could not resolve host {clip(host)} ({clip(detail)})", IMAGE_FETCH_FAILED) from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(str(answer).split("%", 1)[0])
        except ValueError:
            raise ImageError(f"could not resolve host {clip(host)} (invalid address {clip(repr(answer))})",
                             IMAGE_FETCH_FAILED) from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ImageError(f"could not resolve host {clip(host)} (no addresses)", IMAGE_FETCH_FAILED)
    return addresses


async def _send(client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress]) -> httpx.Response:
    """Send the GET to the first checked address that accepts a connection."""
    host = url.raw_host.decode("ascii")
    extensions = {}
    if url.scheme == "https" and parse_ip_literal(host) is None:
        extensions["sni_hostname"] = host  # TLS SNI and certificate check use the name, not the IP
    headers = {**_HEADERS, "Host": url.netloc.decode("ascii")}
    failure: httpx.HTTPError | None = None
    for address in addresses:
        request = client.build_request("GET", url.copy_with(host=str(address)), headers=headers,
                                       extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc  # try the next address, as a browser would
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: httpx parses Location even unfollowed
            raise _transport_error(exc, url) from None
    assert failure is not None
    raise _transport_error(failure, url, address=addresses[-1] if len(addresses) == 1 else None)


async def _read_body(response: httpx.Response, url: httpx.URL, max_bytes: int) -> bytes:
    """The body, streamed and abandoned as soon as it exceeds max_bytes (never buffered whole first).

    The leading bytes must look like one of the accepted image formats, so a large HTML error page or
    video is dropped after its first chunk; Content-Type is ignored, servers mislabel images often.
    """
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageError(f"the image at {_show(url)} is larger than {max_bytes} bytes (Content-Length {declared})",
                         IMAGE_TOO_LARGE)
    chunks: list[bytes] = []
    total = 0
    sniffed = False
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise ImageError(f"the image at {_show(url)} is larger than {max_bytes} bytes", IMAGE_TOO_LARGE)
        chunks.append(chunk)
        if not sniffed and total >= _SNIFF_BYTES:
            _require_image(b"".join(chunks)[:_SNIFF_BYTES], url)
            sniffed = True
    data = b"".join(chunks)
    if not sniffed:
        _require_image(data, url)
    return data


def _require_image(head: bytes, url: httpx.URL) -> None:
    if not head:
        raise ImageError(f"the response from {_show(url)} is empty", INVALID_IMAGE)
    if sniff_format(head) is None:
        raise ImageError(f"the content at {_show(url)} is not a PNG, JPEG, WebP or GIF image", INVALID_IMAGE)


def _transport_error(exc: Exception, url: httpx.URL, address: IPAddress | None = None) -> ImageError:
    host = clip(url.host) + (f" ({address})" if address is not None and str(address) != url.host else "")
    if isinstance(exc, httpx.InvalidURL):
        return ImageError(f"the server at {host} sent an unusable redirect ({_reason(exc)})", IMAGE_FETCH_FAILED)
    if isinstance(exc, httpx.ConnectTimeout):
        return ImageError(f"connecting to {host} timed out", IMAGE_FETCH_TIMEOUT)
    if isinstance(exc, httpx.TimeoutException):
        return ImageError(f"the server at {host} did not answer in time", IMAGE_FETCH_TIMEOUT)
    if isinstance(exc, httpx.ConnectError):
        return ImageError(f"could not connect to {host}: {_reason(exc)}", IMAGE_FETCH_FAILED)
    if isinstance(exc, httpx.RemoteProtocolError):
        return ImageError(f"the server at {host} broke the HTTP protocol: {_reason(exc)}", IMAGE_FETCH_FAILED)
    return ImageError(f"fetching the image from {host} failed: {_reason(exc)}", IMAGE_FETCH_FAILED)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _show(url: str | httpx.URL) -> str:
    """A URL for an error message: whole if short, else clipped (it may be long or carry a token)."""
    text = str(url)
    return text if len(text) <= 200 else text[:197] + "..."


@functools.lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle for every fetch would cost more than a small image's transfer.
    return httpx.create_ssl_context(trust_env=False)
