"""Who is calling: a client's identity from the request, and the storage keys of its counters.

Identities, by a rule's ``key``:

``ip``
    ``REMOTE_ADDR``; IPv6 clients are grouped by their /64 (one subscriber usually holds a whole
    /64, so per-address limits on IPv6 are trivially escaped). When ``REMOTE_ADDR`` is a trusted
    proxy (``RATE_LIMIT_TRUSTED_PROXIES``), ``X-Forwarded-For`` is walked from the right, skipping
    trusted proxies; the first untrusted address is the client. Entries to its left were written
    by the client and are never read, so a forged header cannot choose another client's counter.
    An entry that is not an IP address where we must read one (the header was mangled on our side
    of the trust boundary) makes us fall back to ``REMOTE_ADDR``.
``user``, ``user_or_ip``
    ``request.user.pk`` when authenticated (needs ``AuthenticationMiddleware`` first), else the
    ``ip`` identity. The two are the same: an anonymous request is never unlimited.
``api_key``
    The key from ``Authorization: Bearer <key>`` or ``X-API-Key``. A missing, empty or malformed
    key (whitespace, control characters, over 512 characters) falls back to the ``ip`` identity,
    so garbage neither escapes the limit nor lands on another client's counter. Rotating made-up
    keys gives fresh counters: put an ``ip`` rule on the same path too (every rule applies).
``header:<Name>``
    That header's value; missing, empty or malformed falls back to ``ip``.

Identities never reach storage raw: each is HMAC-SHA256'd with a key derived from
``SECRET_KEY`` (so a leaked Redis cannot be brute-forced back to IPs or API keys) and the kind is
part of the hashed text, so an API key and an IP address never share a counter.

Storage keys: ``rl:{<identity hash>}:<counter>:<algorithm+window>``. A counter's key depends
only on its own rule and client, never on the other rules of the request, so no mix of headers can
spread one client's hits over several keys. The identity hash is the Redis Cluster hash tag: when
the rules of a path key on the same identity (the usual case, and always when a path's rules all
key on ``ip``) every key of the check is in one slot and the check runs on Cluster. A path whose
rules key on different identities (say ``ip`` and ``api_key``) touches several slots: standalone
and Sentinel Redis run it as one atomic script, Redis Cluster refuses it (the limiter then fails
open or closed per settings), so on Cluster give such limits separate paths or one key kind.

The algorithm and window are part of the key because a counter only means something under one of
each; rules with the same ``key_prefix`` share a counter when they also share both.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest

from resilience.ratelimit.rules import Rule

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN_IP = "ip:unknown"
# Hops of X-Forwarded-For we are willing to walk; more trusted proxies than this is not a network.
MAX_FORWARDED_HOPS = 16
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e\x80-\uffff]{1,1024}$")


@lru_cache(maxsize=1)
def _hmac_base() -> Any:
    secret = hashlib.sha256(b"resilience.ratelimit.keys:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(secret, digestmod=hashlib.sha256)


@receiver(setting_changed)
def _forget_secret(*, setting: str, **kwargs: Any) -> None:
    if setting == "SECRET_KEY":
        _hmac_base.cache_clear()
        digest.cache_clear()


@lru_cache(maxsize=8192)
def digest(identity: str) -> str:
    """The keyed hash of an identity, as it appears in storage keys (80 bits, hex).

    Memoised: the same clients come back request after request.
    """
    mac = _hmac_base().copy()
    mac.update(identity.encode("utf-8", "surrogatepass"))
    return mac.hexdigest()[:20]


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    # "[v6]:port" and "v4:port", as some proxies write them.
    if text.startswith("[") and "]" in text:
        host = text[1 : text.index("]")]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _group(addr: IPAddress) -> str:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"ip:{addr.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Address(int(addr) >> 64 << 64)}/64"
    return f"ip:{addr}"


def _trusted(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


@lru_cache(maxsize=4096)
def _ip_identity_of(remote: str) -> str:
    addr = _parse_ip(remote)
    return UNKNOWN_IP if addr is None else _group(addr)


def ip_identity(request: HttpRequest, trusted: tuple[IPNetwork, ...]) -> str:
    remote = request.META.get("REMOTE_ADDR") or ""
    if not trusted:
        return _ip_identity_of(remote)
    addr = _parse_ip(remote)
    if addr is None:
        return UNKNOWN_IP
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if not forwarded or not _trusted(addr, trusted):
        return _group(addr)
    client = addr
    for hop in reversed(forwarded.split(",")[-MAX_FORWARDED_HOPS:]):
        hop_addr = _parse_ip(hop)
        if hop_addr is None:
            return _group(addr)
        client = hop_addr
        if not _trusted(hop_addr, trusted):
            break
    return _group(client)


def presented_api_key(request: HttpRequest) -> str | None:
    """A well-formed key from ``Authorization: Bearer`` or ``X-API-Key``, else ``None``."""
    meta = request.META
    authorization = meta.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        token = credentials.strip()
        if _TOKEN.match(token):
            return token
    token = meta.get("HTTP_X_API_KEY", "").strip()
    return token if _TOKEN.match(token) else None


USER_KEYS = frozenset({"user", "user_or_ip"})


def identity(
    request: HttpRequest, key: str, trusted: tuple[IPNetwork, ...], user: Any = None
) -> str:
    """The raw identity text (kind-prefixed) of the client for one rule key; never stored raw.

    ``user`` is the request's user when the caller resolved it already: the async path must
    (``await request.auser()``), since reading ``request.user`` there loads the session with a
    blocking query, which Django refuses inside the event loop.
    """
    if key == "ip":
        return ip_identity(request, trusted)
    if key in USER_KEYS:
        if user is None:
            user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return ip_identity(request, trusted)
    if key == "api_key":
        token = presented_api_key(request)
        return f"api_key:{token}" if token else ip_identity(request, trusted)
    if key.startswith("header:"):
        name = key[len("header:") :]
        value = (request.headers.get(name) or "").strip()
        if _HEADER_VALUE.match(value):
            return f"header:{name.lower()}:{value}"
        return ip_identity(request, trusted)
    return ip_identity(request, trusted)


def storage_key(rule: Rule, identity_digest: str) -> str:
    """The key of ``rule``'s counter for one client; the client's digest is the hash tag."""
    return f"rl:{{{identity_digest}}}:{rule.key_suffix}"


def counter_pattern(rule: Rule) -> str:
    """A SCAN/glob pattern for every key of ``rule``'s counter, whatever its algorithm or window.

    ``Rule.counter`` is quoted, so it holds no ``:`` or glob character and the pattern matches
    this counter's keys only.
    """
    return f"rl:{{*}}:{rule.counter}:*"
