"""The SSRF guard of fetch_image: schemes, host lists, internal addresses and address pinning."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import ImageSettings
from multimodal.errors import ImageError

from .fetching import FakeResolver, fails, fetch
from .origin import IMAGE

REFUSED = "image_url_refused"
INVALID = "invalid_image_url"
DEFAULT = ImageSettings(connect_timeout_s=2.0, fetch_timeout_s=5.0)


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f.1", "0x7f000001", "127.1", "[::ffff:127.0.0.1]"])
def test_default_policy_refuses_loopback_literals(origin, host):
    err = fails(REFUSED, origin.url("/image.png", host=host), DEFAULT)
    assert "127.0.0.1, a loopback address; fetching it is not allowed" in err.message
    assert origin.requests == []


def test_zero_padded_octets_are_rejected_as_malformed(origin):
    fails(INVALID, origin.url("/image.png", host="0177.0.0.1"), DEFAULT)  # httpx will not parse it at all
    assert origin.requests == []


def test_literal_message_names_the_unusual_spelling(origin):
    err = fails(REFUSED, origin.url("/image.png", host="2130706433"), DEFAULT)
    assert err.message.startswith("the image URL's host 2130706433 is 127.0.0.1, a loopback address")
    err = fails(REFUSED, origin.url("/image.png"), DEFAULT)
    assert err.message == "the image URL's host is 127.0.0.1, a loopback address; fetching it is not allowed"


def test_localhost_is_refused(origin):
    err = fails(REFUSED, origin.url("/image.png", host="localhost"), DEFAULT)
    assert "the image URL's host localhost resolves to" in err.message
    assert "loopback" in err.message
    assert origin.requests == []


# Issue 18: with a trailing dot these went to DNS as names (and failed as image_fetch_failed).
@pytest.mark.parametrize("host", ["127.0.0.1.", "0x7f.1.", "2130706433.", "127.1.", "0x7f000001.", "0.",
                                  "localhost.", "LOCALHOST.", "LocalHost", "img.localhost", "img.localhost."])
def test_trailing_dots_and_localhost_names_are_loopback_without_a_lookup(origin, host):
    resolver = FakeResolver(["93.184.216.34"])  # a lookup would find a public address: it must not happen
    err = fails(REFUSED, origin.url("/image.png", host=host), DEFAULT, resolve=resolver)
    assert "a loopback address" in err.message or "an unspecified address" in err.message
    assert resolver.calls == [] and origin.requests == []


@pytest.mark.parametrize("host", ["169.254.169.254.", "10.0.0.1.", "192.168.1.1.", "100.64.0.1.", "0xa9fea9fe."])
def test_trailing_dots_on_other_internal_literals_are_refused(origin, host):
    resolver = FakeResolver(["93.184.216.34"])
    fails(REFUSED, origin.url("/image.png", host=host), DEFAULT, resolve=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1..", "[::1].", ".127.0.0.1", "localhost.."])
def test_malformed_dotted_hosts_stay_invalid(origin, host):
    fails(INVALID, origin.url("/image.png", host=host), DEFAULT)
    assert origin.requests == []


def test_a_trailing_dot_reaches_a_private_host_as_written_without_it(origin):
    assert fetch(origin.url("/image.png", host="127.0.0.1.")) == IMAGE  # LOCAL lists 127.0.0.1
    policy = ImageSettings(private_hosts=("localhost",), connect_timeout_s=2.0, fetch_timeout_s=5.0)
    resolver = FakeResolver(["10.9.9.9"])
    assert fetch(origin.url("/image.png", host="localhost."), policy, resolve=resolver) == IMAGE
    assert resolver.calls == []  # loopback by definition, connected to 127.0.0.1


def test_deny_hosts_match_a_trailing_dot(origin):
    policy = ImageSettings(private_hosts=("127.0.0.1",), deny_hosts=("127.0.0.1", "localhost"))
    err = fails(REFUSED, origin.url("/image.png", host="127.0.0.1."), policy)
    assert "not allowed on this server" in err.message
    fails(REFUSED, origin.url("/image.png", host="localhost."), policy)
    assert origin.requests == []


@pytest.mark.parametrize(("answer", "reason"), [
    (["127.0.0.1"], "loopback"),
    (["169.254.169.254"], "metadata"),
    (["93.184.216.34", "10.0.0.1"], "private"),  # any bad answer sinks the host
    (["::1"], "loopback"),
])
def test_names_resolving_to_internal_addresses_are_refused(origin, answer, reason):
    resolver = FakeResolver(answer)
    err = fails(REFUSED, origin.url("/image.png", host="img.example.test"), DEFAULT, resolve=resolver)
    assert reason in err.message
    assert resolver.calls == [("img.example.test", origin.port)]
    assert origin.requests == []


def test_private_hosts_allow_the_local_origin(origin):
    assert fetch(origin.url("/image.png")) == IMAGE
    (path, headers), = origin.requests
    assert path == "/image.png"
    assert headers["host"] == f"127.0.0.1:{origin.port}"
    assert headers["user-agent"] == "lodestar-image-fetch"
    assert headers["accept"] == "image/*"


def test_private_hosts_match_the_host_as_written(origin):
    fails(REFUSED, origin.url("/image.png", host="2130706433"))  # LOCAL allows "127.0.0.1" only


def test_connection_goes_to_the_checked_address(origin):
    # A rebinding resolver: the first answer is checked, a second lookup would give another address.
    resolver = FakeResolver(["127.0.0.1"], ["127.0.0.2"])
    policy = ImageSettings(private_hosts=("img.example.test",), fetch_timeout_s=5.0)
    assert fetch(origin.url("/image.png", host="img.example.test"), policy, resolve=resolver) == IMAGE
    assert len(resolver.calls) == 1
    (_, headers), = origin.requests
    assert headers["host"] == f"img.example.test:{origin.port}"


def test_each_redirect_hop_is_resolved_and_pinned_anew(origin):
    # Hop two resolves to 127.0.0.2, where nothing listens: the fetch must go there, not reuse hop one.
    resolver = FakeResolver(["127.0.0.1"], ["127.0.0.2"])
    policy = ImageSettings(private_hosts=("img.example.test",), fetch_timeout_s=5.0)
    err = fails("image_fetch_failed", origin.url("/redirect/1", host="img.example.test"), policy, resolve=resolver)
    assert "could not connect to img.example.test (127.0.0.2)" in err.message
    assert len(resolver.calls) == 2
    assert [path for path, _ in origin.requests] == ["/redirect/1"]


@pytest.mark.parametrize("target", ["http://localhost:{port}/image.png", "http://2130706433:{port}/image.png",
                                    "http://[::1]:{port}/image.png"])
def test_redirect_to_an_internal_address_is_refused(origin, target):
    location = target.format(port=origin.port)
    err = fails(REFUSED, origin.url(f"/redirect-to?location={location}"))
    assert err.message.startswith("the redirect target's host")
    assert "loopback" in err.message and location in err.message
    assert len(origin.requests) == 1


@pytest.mark.parametrize(("location", "code"), [
    ("file:///etc/passwd", REFUSED),
    ("ftp://example.com/x.png", INVALID),
    ("data:image/png;base64,AA==", REFUSED),  # issue 18: was image_fetch_failed, httpx's own parse of Location
    ("DATA:image/png;base64,AA==", REFUSED),
    ("data:,x", REFUSED),
    ("http://exa mple.com/", INVALID),
])
def test_redirect_to_other_schemes_is_refused(origin, tmp_path, location, code):
    policy = ImageSettings(private_hosts=("127.0.0.1",), media_dir=str(tmp_path))
    fails(code, origin.url(f"/redirect-to?location={location}"), policy)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_a_data_url_is_refused_as_documented(origin, status):
    err = fails(REFUSED, origin.url(f"/redirect-to?status={status}&location=data:image/png;base64,AA=="))
    assert err.message == "the upstream server redirected to a data: URL, which is not allowed"
    assert len(origin.requests) == 1


def test_redirects_still_follow_their_location_after_it_is_held_back(origin):
    assert fetch(origin.url("/redirect/2")) == IMAGE
    err = fails("image_fetch_failed", origin.url("/redirect-to?location=/status/404"))
    assert "after redirecting to" in err.message


# Every internal IPv4 address, in every spelling the resolver reads as a literal, with or without the
# trailing dot: refused without a DNS lookup and without a connection.
INTERNAL = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
            "0.0.0.0/8"]
internal_ipv4 = st.sampled_from(INTERNAL).map(ipaddress.IPv4Network).flatmap(
    lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i]))


def spell(ip: ipaddress.IPv4Address, form: str) -> str:
    a, b, c, d = ip.packed
    n = int(ip)
    return {"dotted": f"{a}.{b}.{c}.{d}", "decimal": str(n), "hex": f"0x{n:x}",
            "hex-octets": ".".join(f"0x{x:x}" for x in ip.packed), "a.bcd": f"{a}.{n & 0xFFFFFF}",
            "a.b.cd": f"{a}.{b}.{n & 0xFFFF}"}[form]


FORMS = ["dotted", "decimal", "hex", "hex-octets", "a.bcd", "a.b.cd"]


@settings(max_examples=80, deadline=None)
@given(internal_ipv4, st.sampled_from(FORMS), st.booleans(), st.integers(1, 65535))
def test_internal_ipv4_in_any_spelling_is_refused_without_a_lookup(ip, form, dot, port):
    host = spell(ip, form) + ("." if dot else "")
    resolver = FakeResolver(["93.184.216.34"])
    err = fails(REFUSED, f"http://{host}:{port}/a.png", DEFAULT, resolve=resolver)
    assert str(ip) in err.message and resolver.calls == []


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://example.com/", "javascript:alert(1)",
                                 "cat.png", "//example.com/a.png", "data:image/png;base64,AA==", "http:///a.png",
                                 "http://exa mple.com/a.png", "http://example.com:99999/a.png", "http://[::1/a"])
def test_unsupported_or_malformed_urls(url):
    fails(INVALID, url, DEFAULT)


def test_userinfo_is_refused(origin):
    err = fails(REFUSED, origin.url("/image.png", host="user:secret@127.0.0.1"))
    assert "secret" not in err.message


def test_http_can_be_disabled(origin):
    err = fails(REFUSED, origin.url("/image.png"), ImageSettings(allow_http=False, private_hosts=("127.0.0.1",)))
    assert "https" in err.message


def test_file_urls_need_a_media_dir():
    fails(REFUSED, "file:///etc/passwd", DEFAULT)


def test_deny_hosts(origin):
    policy = ImageSettings(private_hosts=("127.0.0.1", "img.example.test"), deny_hosts=("127.0.0.1", "*.example.test"))
    fails(REFUSED, origin.url("/image.png"), policy)
    fails(REFUSED, origin.url("/image.png", host="0x7f.1"), policy)  # the canonical address is denied too
    resolver = FakeResolver(["127.0.0.1"])
    err = fails(REFUSED, origin.url("/image.png", host="IMG.Example.Test."), policy, resolve=resolver)
    assert "not allowed on this server" in err.message
    assert resolver.calls == []  # refused before any lookup
    assert origin.requests == []


def test_allow_hosts(origin):
    policy = ImageSettings(allow_hosts=("*.example.test",), private_hosts=("127.0.0.1", "img.example.test"))
    resolver = FakeResolver(["127.0.0.1"])
    assert fetch(origin.url("/image.png", host="img.example.test"), policy, resolve=resolver) == IMAGE
    err = fails(REFUSED, origin.url("/image.png"), policy)
    assert "not among the hosts" in err.message
    fails(REFUSED, origin.url("/image.png", host="example.test"), policy, resolve=resolver)


def test_allow_hosts_apply_to_redirects(origin):
    policy = ImageSettings(allow_hosts=("img.example.test",), private_hosts=("img.example.test",))
    resolver = FakeResolver(["127.0.0.1"])
    target = f"http://127.0.0.1:{origin.port}/image.png"
    fails(REFUSED, origin.url(f"/redirect-to?location={target}", host="img.example.test"), policy, resolve=resolver)


@pytest.mark.parametrize("failure", [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), []])
def test_resolution_failure(failure):
    resolver = FakeResolver(failure)
    err = fails("image_fetch_failed", "https://nowhere.example.test/a.png", DEFAULT, resolve=resolver)
    assert err.message.startswith("could not resolve host nowhere.example.test")


def test_slow_resolution_counts_against_the_total_timeout():
    async def hang(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return []

    policy = ImageSettings(fetch_timeout_s=0.3)
    err = fails("image_fetch_timeout", "https://slow-dns.example.test/a.png", policy, resolve=hang)
    assert "took longer than 0.3 s" in err.message


def test_errors_are_image_errors_only():
    with pytest.raises(ImageError):
        fetch("http://\udcff.example/", DEFAULT)
