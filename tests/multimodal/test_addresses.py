"""The SSRF guard's address classifier: every internal form is refused, public unicast is allowed."""

from __future__ import annotations

import ipaddress

import pytest

from multimodal.addresses import is_localhost_name, parse_ip_literal, refusal_reason

REFUSED = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fc00::1",
    "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:7f00:1::", "2002:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "::127.0.0.1", "2001:db8::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
           "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address):
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_reasons_name_the_class():
    assert "metadata" in refusal_reason(ipaddress.ip_address("169.254.169.254"))
    assert "loopback" in refusal_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert "carrier-grade" in refusal_reason(ipaddress.ip_address("100.64.0.1"))
    assert "multicast" in refusal_reason(ipaddress.ip_address("224.0.0.1"))


@pytest.mark.parametrize(("literal", "expected"), [
    ("2130706433", "127.0.0.1"),  # decimal
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0x7f.1", "127.0.0.1"),  # hex, short form
    ("0x7f000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
    ("[::1]", "::1"),
    ("[fe80::1%eth0]", "fe80::1"),
    ("10.0.0.1", "10.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),  # the fully qualified spelling (issue 18)
    ("2130706433.", "127.0.0.1"),
    ("0x7f.1.", "127.0.0.1"),
    ("169.254.169.254.", "169.254.169.254"),
    ("0.", "0.0.0.0"),
])
def test_literal_spellings(literal, expected):
    ip = parse_ip_literal(literal)
    assert ip == ipaddress.ip_address(expected)
    assert refusal_reason(ip) is not None


@pytest.mark.parametrize("name", ["example.com", "images.example.org", "localhost", "deadbeef.example", "",
                                  ".", "127.0.0.1..", "..", "example.com.", "[::1]."])
def test_names_are_not_literals(name):
    assert parse_ip_literal(name) is None


@pytest.mark.parametrize("name", ["localhost", "localhost.", "LOCALHOST", "LocalHost.", "a.localhost",
                                  "a.b.localhost."])
def test_localhost_names(name):
    assert is_localhost_name(name)


@pytest.mark.parametrize("name", ["localhost.example.com", "notlocalhost", "localhostx", "example.com", "127.0.0.1",
                                  "localhost.."])
def test_names_that_are_not_localhost(name):
    assert not is_localhost_name(name)
