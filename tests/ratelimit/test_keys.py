"""Client identity: proxies, IPv6 grouping, API keys and headers, never stored raw."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from resilience.ratelimit import keys

TRUSTED = keys.parse_networks(["10.0.0.0/8"])
factory = RequestFactory()


def ip_of(remote: str, xff: str | None = None, trusted=TRUSTED) -> str:
    extra = {"REMOTE_ADDR": remote}
    if xff is not None:
        extra["HTTP_X_FORWARDED_FOR"] = xff
    return keys.ip_identity(factory.get("/", **extra), trusted)


def test_ip_identity__xff_is_ignored_unless_the_peer_is_a_trusted_proxy():
    assert ip_of("192.0.2.1", "203.0.113.9") == "ip:192.0.2.1"
    assert ip_of("10.0.0.1", "203.0.113.9") == "ip:203.0.113.9"
    assert ip_of("10.0.0.1", "203.0.113.9", trusted=()) == "ip:10.0.0.1"


def test_ip_identity__walks_xff_from_the_right_skipping_trusted_proxies():
    # The client forged the left-most entry; proxies appended the rest.
    assert ip_of("10.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.7") == "ip:203.0.113.9"
    assert ip_of("10.0.0.1", "10.0.0.9, 10.0.0.7") == "ip:10.0.0.9"


@pytest.mark.parametrize("xff", ["garbage", "203.0.113.9, not-an-ip", ",", " ", "1.2.3.4.5"])
def test_ip_identity__malformed_xff_from_a_proxy_falls_back_to_remote_addr(xff):
    assert ip_of("10.0.0.1", xff) == "ip:10.0.0.1"


def test_ip_identity__garbage_left_of_the_client_is_never_read():
    assert ip_of("10.0.0.1", "<script>, 203.0.113.9") == "ip:203.0.113.9"


def test_ip_identity__ipv6_is_grouped_by_64_and_mapped_v4_unwrapped():
    assert ip_of("2001:db8:1:2::1") == ip_of("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert ip_of("2001:db8:1:3::1") != ip_of("2001:db8:1:2::1")
    assert ip_of("::ffff:192.0.2.1") == "ip:192.0.2.1"
    assert ip_of("10.0.0.1", "[2001:db8::5]:443") == "ip:2001:db8::/64"
    assert ip_of("not an address") == keys.UNKNOWN_IP


def test_identity__api_key_from_bearer_or_header_else_ip():
    def ident(**headers):
        return keys.identity(factory.get("/", REMOTE_ADDR="192.0.2.1", **headers), "api_key", ())

    assert ident(HTTP_AUTHORIZATION="Bearer s3cret") == "api_key:s3cret"
    assert ident(HTTP_X_API_KEY="s3cret") == "api_key:s3cret"
    for garbage in ("Bearer ", "Bearer a b", "Basic Zm9v", "Bearer " + "x" * 600):
        assert ident(HTTP_AUTHORIZATION=garbage) == "ip:192.0.2.1"
    assert ident(HTTP_X_API_KEY="bad\x00key") == "ip:192.0.2.1"


def test_identity__header_key_and_users():
    request = factory.get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_TENANT="acme")
    assert keys.identity(request, "header:X-Tenant", ()) == "header:x-tenant:acme"
    assert keys.identity(request, "header:X-Missing", ()) == "ip:192.0.2.1"
    assert keys.identity(request, "user", ()) == "ip:192.0.2.1"  # no request.user at all


def test_digest__hides_secrets_and_separates_kinds():
    digest = keys.digest("api_key:s3cret")
    assert "s3cret" not in digest and len(digest) == 20
    assert digest != keys.digest("ip:s3cret")
    assert digest == keys.digest("api_key:s3cret")
