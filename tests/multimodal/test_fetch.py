"""fetch_image against a real local origin: redirects, statuses, size limits, streaming, timeouts, TLS."""

from __future__ import annotations

import time

import httpx
import pytest

from core.settings import ImageSettings
from multimodal.fetch import _transport_error

from .conftest import TLS_NAME
from .fetching import FakeResolver, fails, fetch
from .origin import HUGE, IMAGE

FAILED, TOO_LARGE, TIMEOUT = "image_fetch_failed", "image_too_large", "image_fetch_timeout"


def test_redirect_chain_within_the_limit(origin):
    assert fetch(origin.url("/redirect/3")) == IMAGE
    assert [path for path, _ in origin.requests] == ["/redirect/3", "/redirect/2", "/redirect/1", "/image.png"]


def test_one_redirect_too_many(origin):
    err = fails(FAILED, origin.url("/redirect/4"))
    assert err.message == "too many redirects (more than 3)"
    assert len(origin.requests) == 4  # the fifth URL is never requested


def test_redirects_can_be_turned_off(origin):
    policy = ImageSettings(private_hosts=("127.0.0.1",), max_redirects=0)
    assert fetch(origin.url("/image.png"), policy) == IMAGE
    fails(FAILED, origin.url("/redirect/1"), policy)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_redirect_status_is_followed(origin, status):
    assert fetch(origin.url(f"/redirect-to?status={status}&location=/image.png")) == IMAGE


def test_absolute_redirect(origin):
    assert fetch(origin.url(f"/redirect-to?location={origin.url('/image.png')}")) == IMAGE


@pytest.mark.parametrize(("status", "phrase"), [(404, "404 Not Found"), (500, "500 Internal Server Error"),
                                                (403, "403 Forbidden")])
def test_upstream_errors_name_the_status(origin, status, phrase):
    err = fails(FAILED, origin.url(f"/status/{status}"))
    assert err.message == f"the upstream server answered {phrase}"


def test_upstream_error_after_a_redirect_says_where(origin):
    err = fails(FAILED, origin.url("/redirect-to?location=/status/404"))
    assert err.message.startswith("the upstream server answered 404 Not Found after redirecting to http://127.0.0.1")


def test_content_type_is_ignored(origin):
    assert fetch(origin.url("/mislabelled")) == IMAGE  # judged by its bytes, later, not by its label


def test_non_image_bodies_are_refused(origin):
    err = fails("invalid_image", origin.url("/text"))
    assert err.message == f"the content at {origin.url('/text')} is not a PNG, JPEG, WebP or GIF image"
    err = fails("invalid_image", origin.url("/empty"))
    assert err.message == f"the response from {origin.url('/empty')} is empty"


def test_non_image_bodies_are_dropped_after_the_first_chunk(origin):
    err = fails("invalid_image", origin.url("/huge-chunked?junk=1"))
    assert "is not a PNG" in err.message
    assert origin.event("/huge-chunked").wait(10)
    assert origin.sent["/huge-chunked"] < HUGE // 2


def test_idna_hosts(origin):
    resolver = FakeResolver(["127.0.0.1"])
    policy = ImageSettings(private_hosts=("bücher.example.test",))
    assert fetch(origin.url("/image.png", host="bücher.example.test"), policy, resolve=resolver) == IMAGE
    assert resolver.calls == [("xn--bcher-kva.example.test", origin.port)]
    (_, headers), = origin.requests
    assert headers["host"] == f"xn--bcher-kva.example.test:{origin.port}"


def test_chunked_body_without_content_length(origin):
    assert fetch(origin.url("/chunked")) == IMAGE


def test_declared_length_over_the_limit_is_refused_before_reading(origin):
    policy = ImageSettings(private_hosts=("127.0.0.1",), max_bytes=1024 * 1024)
    err = fails(TOO_LARGE, origin.url("/huge"), policy)
    url = origin.url("/huge")
    assert err.message == f"the image at {url} is larger than 1048576 bytes (Content-Length {HUGE})"
    assert origin.event("/huge").wait(10)
    assert origin.sent["/huge"] < HUGE // 2


def test_streamed_body_is_abandoned_once_over_the_limit(origin):
    policy = ImageSettings(private_hosts=("127.0.0.1",), max_bytes=1024 * 1024)
    started = time.monotonic()
    err = fails(TOO_LARGE, origin.url("/huge-chunked"), policy)
    assert err.message == f"the image at {origin.url('/huge-chunked')} is larger than 1048576 bytes"
    assert origin.event("/huge-chunked").wait(10)
    # Whatever the socket buffers took, the client hung up long before 50 MB.
    assert origin.sent["/huge-chunked"] < HUGE // 2
    assert time.monotonic() - started < 5


def test_default_limit_is_20_mib(origin):
    err = fails(TOO_LARGE, origin.url("/huge-chunked"))
    assert "larger than 20971520 bytes" in err.message


def test_slow_origin_hits_the_total_timeout(origin):
    policy = ImageSettings(private_hosts=("127.0.0.1",), fetch_timeout_s=0.5)
    started = time.monotonic()
    err = fails(TIMEOUT, origin.url("/slow?delay=3"), policy)
    assert err.message == f"fetching the image at {origin.url('/slow?delay=3')} took longer than 0.5 s"
    assert time.monotonic() - started < 2


def test_connection_refused(origin):
    port = origin.port
    origin.stop()  # nothing listens there any more
    err = fails(FAILED, f"http://127.0.0.1:{port}/image.png")
    assert err.message.startswith("could not connect to 127.0.0.1")


def test_connect_timeout_is_reported_as_a_timeout():
    err = _transport_error(httpx.ConnectTimeout("timed out"), httpx.URL("https://img.example.test/a.png"))
    assert (err.code, err.message) == (TIMEOUT, "connecting to img.example.test timed out")


def test_tls_uses_the_name_for_sni_and_verification(tls_origin, client_tls):
    resolver = FakeResolver(["127.0.0.1"])
    policy = ImageSettings(private_hosts=(TLS_NAME,), fetch_timeout_s=5.0)
    url = tls_origin.url("/image.png", host=TLS_NAME, scheme="https")
    assert fetch(url, policy, resolve=resolver, verify=client_tls) == IMAGE
    assert tls_origin.sni == [TLS_NAME]
    (_, headers), = tls_origin.requests
    assert headers["host"] == f"{TLS_NAME}:{tls_origin.port}"


def test_tls_certificate_for_another_name_is_rejected(tls_origin, client_tls):
    resolver = FakeResolver(["127.0.0.1"])
    policy = ImageSettings(private_hosts=("other.example.test",), fetch_timeout_s=5.0)
    url = tls_origin.url("/image.png", host="other.example.test", scheme="https")
    err = fails(FAILED, url, policy, resolve=resolver, verify=client_tls)
    assert "could not connect to other.example.test" in err.message
    assert "certificate" in err.message.lower()
    assert tls_origin.requests == []


def test_tls_with_the_default_trust_store_rejects_a_private_ca(tls_origin):
    resolver = FakeResolver(["127.0.0.1"])
    policy = ImageSettings(private_hosts=(TLS_NAME,), fetch_timeout_s=5.0)
    fails(FAILED, tls_origin.url("/image.png", host=TLS_NAME, scheme="https"), policy, resolve=resolver)
