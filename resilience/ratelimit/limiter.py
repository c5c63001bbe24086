"""The decision: may this request go on? One function shared by the sync and async paths.

``RateLimiter.check(request)`` (sync) and ``await RateLimiter.acheck(request)`` (async) differ only
in how they reach the rule snapshot and the backend; both build the check with ``_plan`` and turn
the backend's verdicts into a ``Decision`` with ``_decide``.

``Decision.allowed`` is False only when an *enforced* rule refused the request, or when the
backend is unreachable and ``RATE_LIMIT_FAIL_OPEN`` is False. Shadow rules are checked and counted
like enforced ones, and a request they would refuse is logged (one line per rule per
``SHADOW_LOG_INTERVAL``, with the number of requests since the last line), never refused.
Backend outages are logged the same way: one line per ``OUTAGE_LOG_INTERVAL``, not per request.

Every decision is also tallied in process for operators (``stats.counts``: allowed and blocked
per rule, the most blocked clients, requests decided without the backend), at the cost of a
dictionary update; the tallies leave the process with the registry's periodic poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest

from resilience.conf import resilience_settings
from resilience.exceptions import BackendUnavailable
from resilience.ratelimit import keys
from resilience.ratelimit.algorithms import MICROS, Verdict, ceil_seconds
from resilience.ratelimit.backends import Backend, Hit
from resilience.ratelimit.rules import ALGORITHMS, MODES, Rule, parse_methods
from resilience.ratelimit.stats import counts
from resilience.registry import registry
from resilience.validators import validate_client_key, validate_methods, validate_rule_path

logger = logging.getLogger("resilience.ratelimit")

SHADOW_LOG_INTERVAL = 10.0
OUTAGE_LOG_INTERVAL = 30.0


class Decision(NamedTuple):
    """What the limiter decided for one request.

    ``rule`` is the enforced rule that refused the request or, when allowed, the enforced rule
    with the least quota left (the one the informational headers describe). ``reset`` and
    ``retry_after`` are whole seconds, rounded up: waiting ``retry_after`` seconds is never too
    early. ``policies`` are the enforced rules that applied, for ``RateLimit-Policy``. A named
    tuple, like the backend's values: immutable and cheap to make on every request.
    """

    allowed: bool
    rule: Rule | None = None
    remaining: int = 0
    reset: int = 0
    retry_after: int = 0
    policies: tuple[Rule, ...] = ()
    shadow_refused: tuple[Rule, ...] = ()
    unavailable: bool = False

    @property
    def limit(self) -> int:
        return self.rule.calls if self.rule is not None else 0


ALLOW = Decision(allowed=True)


class ThrottledLog:
    """Logs a line per key at most once per ``interval`` seconds, counting those held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        logger.log(level, message + " (%d more since the last such line)", *args, held)


@dataclass(frozen=True)
class _Config:
    enabled: bool
    backend: Backend
    exempt: tuple[str, ...]
    trusted: tuple[keys.IPNetwork, ...]
    fail_open: bool


def _build_backend() -> Backend:
    if resilience_settings.RATE_LIMIT_BACKEND == "redis":
        from resilience.ratelimit.backends.redis import RedisBackend

        return RedisBackend(resilience_settings.RATE_LIMIT_CACHE_ALIAS)
    from resilience.ratelimit.backends.memory import MemoryBackend

    return MemoryBackend()


def make_rule(
    *,
    path: str,
    calls: int,
    window_seconds: int,
    key: str = "ip",
    key_prefix: str = "",
    algorithm: str = "sliding_window",
    methods: str | Iterable[str] | None = None,
    mode: str = "enforce",
    name: str | None = None,
    source: str = "code",
) -> Rule:
    """A validated ``Rule``; ``ValueError`` naming the argument when one is wrong."""

    def positive(arg: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, not {value!r}.")
        return value

    calls = positive("calls", calls)
    window_seconds = positive("window_seconds", window_seconds)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    try:
        validate_rule_path(path)
        validate_client_key(key)
        method_text = methods if isinstance(methods, str) else ",".join(methods or ())
        validate_methods(method_text)
    except ValidationError as exc:
        raise ValueError(" ".join(exc.messages)) from exc
    return Rule(
        name=name or key_prefix.rstrip(":") or f"{path} {calls}/{window_seconds}s by {key}",
        path=path,
        calls=calls,
        window_seconds=window_seconds,
        key=key,
        algorithm=algorithm,
        mode=mode,
        methods=parse_methods(methods),
        key_prefix=key_prefix,
        source=source,
    )


class RateLimiter:
    """The process's limiter: ``get_rate_limiter()`` returns the one instance."""

    def __init__(self) -> None:
        self._config: _Config | None = None
        self._shadow_log = ThrottledLog(SHADOW_LOG_INTERVAL)
        self._outage_log = ThrottledLog(OUTAGE_LOG_INTERVAL)

    @property
    def config(self) -> _Config:
        config = self._config
        if config is None:
            config = self._config = _Config(
                enabled=bool(resilience_settings.RATE_LIMIT_ENABLED),
                backend=_build_backend(),
                exempt=tuple(resilience_settings.RATE_LIMIT_EXEMPT_PATHS),
                trusted=keys.parse_networks(resilience_settings.RATE_LIMIT_TRUSTED_PROXIES),
                fail_open=bool(resilience_settings.RATE_LIMIT_FAIL_OPEN),
            )
        return config

    @property
    def backend(self) -> Backend:
        return self.config.backend

    def reload_settings(self) -> None:
        """Forget the configuration (and the log throttles: a new backend has a new history)."""
        self._config = None
        self._shadow_log = ThrottledLog(SHADOW_LOG_INTERVAL)
        self._outage_log = ThrottledLog(OUTAGE_LOG_INTERVAL)

    # Rules declared in code -----------------------------------------------------------------

    def configure_endpoint(
        self,
        path: str,
        calls: int,
        window_seconds: int,
        *,
        key_prefix: str = "",
        key: str = "ip",
        algorithm: str = "sliding_window",
        methods: str | Iterable[str] | None = None,
        mode: str = "enforce",
        name: str | None = None,
    ) -> Rule:
        """Declare a limit on ``path`` (exact, or a ``/prefix/*``) in code, in this process.

        A rule with the same name on the same path replaces the earlier one; rules on other
        paths are left alone, even when they share the name or ``key_prefix`` (a shared prefix
        means a shared counter, see ``Rule``). A database rule on the same path takes
        precedence (see ``resilience.middleware``). Raises ``ValueError`` naming the bad
        argument.
        """
        rule = make_rule(
            path=path,
            calls=calls,
            window_seconds=window_seconds,
            key=key,
            key_prefix=key_prefix,
            algorithm=algorithm,
            methods=methods,
            mode=mode,
            name=name,
        )
        registry.add_code_rule(rule)
        return rule

    def remove_endpoint(self, path: str | None = None) -> None:
        """Forget code rules on ``path``, or every code rule when ``path`` is None."""
        registry.remove_code_rules(path)

    def reset(self, rules: Sequence[Rule]) -> int:
        """Forget every client's counters of ``rules``; returns the number of keys removed."""
        return self.backend.reset([keys.counter_pattern(rule) for rule in rules])

    # The decision ---------------------------------------------------------------------------

    def is_exempt(self, path: str) -> bool:
        return path_exempt(self.config, path)

    def check(self, request: HttpRequest, rules: Sequence[Rule] | None = None) -> Decision:
        """Decide for ``request`` against ``rules``, or the rules its path matches (sync)."""
        config = self.config
        if rules is None:
            path = request.path_info
            if config.exempt and path.startswith(config.exempt):  # path_exempt, inlined
                return ALLOW
            rules = registry.snapshot().match(request.method or "GET", path)
        if not rules:
            return ALLOW
        hits = _plan(request, rules, config)
        try:
            result = config.backend.check(hits)
        except BackendUnavailable as exc:
            return self._unavailable(config, exc)
        return self._decide(request, rules, result.verdicts, hits)

    async def acheck(self, request: HttpRequest, rules: Sequence[Rule] | None = None) -> Decision:
        """``check`` for async callers: no blocking I/O on the event loop."""
        config = self.config
        if rules is None:
            if path_exempt(config, request.path_info):
                return ALLOW
            snapshot = await registry.asnapshot()
            rules = snapshot.match(request.method or "GET", request.path_info)
        if not rules:
            return ALLOW
        user = None
        if hasattr(request, "auser") and any(rule.key in keys.USER_KEYS for rule in rules):
            user = await request.auser()
        hits = _plan(request, rules, config, user)
        try:
            result = await config.backend.acheck(hits)
        except BackendUnavailable as exc:
            return self._unavailable(config, exc)
        return self._decide(request, rules, result.verdicts, hits)

    def _unavailable(self, config: _Config, exc: BackendUnavailable) -> Decision:
        counts.record_unavailable(config.fail_open)
        outcome = "letting requests through" if config.fail_open else "refusing requests"
        self._outage_log("outage", logging.ERROR, "Rate limiting unavailable, %s: %s", outcome, exc)
        return Decision(allowed=config.fail_open, unavailable=True)

    def _decide(
        self,
        request: HttpRequest,
        rules: Sequence[Rule],
        verdicts: Sequence[Verdict],
        hits: Sequence[Hit],
    ) -> Decision:
        if len(hits) == 1 and hits[0].enforced:  # the common case, without the bookkeeping
            rule, (allowed, remaining, reset_us, retry_after_us) = rules[0], verdicts[0]
            counts.record(rule, allowed, hits[0].key)
            # ceil_seconds, inlined: both are non-negative for an enforced verdict.
            return Decision(
                allowed,
                rule,
                remaining,
                -(-reset_us // MICROS),
                0 if allowed else -(-retry_after_us // MICROS),
                rules if isinstance(rules, tuple) else tuple(rules),
            )
        blocking: tuple[Rule, Verdict] | None = None
        tightest: tuple[Rule, Verdict] | None = None
        shadow_refused: list[Rule] = []
        policies: list[Rule] = []
        for rule, verdict in zip(rules, verdicts, strict=True):
            if not rule.enforced:
                if not verdict.allowed:
                    shadow_refused.append(rule)
                continue
            policies.append(rule)
            if not verdict.allowed:
                if blocking is None or verdict.retry_after_us > blocking[1].retry_after_us:
                    blocking = (rule, verdict)
            elif tightest is None or verdict.remaining < tightest[1].remaining:
                tightest = (rule, verdict)
        # Operators' counts (see ``stats``): a refused request counts only on the refusing rules.
        for rule, verdict, hit in zip(rules, verdicts, hits, strict=True):
            if not rule.enforced or blocking is None or not verdict.allowed:
                counts.record(rule, verdict.allowed, hit.key)
        for rule in shadow_refused:
            self._shadow_log(
                rule.name,
                logging.WARNING,
                "Shadow rate limit %r would have refused %s %s",
                rule.name,
                request.method,
                request.path_info,
            )
        chosen = blocking or tightest
        if chosen is None:
            return Decision(allowed=True, shadow_refused=tuple(shadow_refused))
        rule, verdict = chosen
        return Decision(
            allowed=blocking is None,
            rule=rule,
            remaining=verdict.remaining,
            reset=ceil_seconds(verdict.reset_us),
            retry_after=ceil_seconds(verdict.retry_after_us) if blocking else 0,
            policies=tuple(policies),
            shadow_refused=tuple(shadow_refused),
        )


def path_exempt(config: _Config, path: str) -> bool:
    return bool(config.exempt) and path.startswith(config.exempt)


def _plan(
    request: HttpRequest, rules: Sequence[Rule], config: _Config, user: Any = None
) -> list[Hit]:
    """The backend's work for one request: one ``Hit`` per rule (``user``: see ``identity``)."""
    if len(rules) == 1:  # the common case: one identity to hash, nothing to share
        rule = rules[0]
        digest = keys.digest(keys.identity(request, rule.key, config.trusted, user))
        return [
            Hit(
                f"rl:{{{digest}}}:{rule.key_suffix}",
                rule.algorithm,
                rule.limit,
                rule.mode == "enforce",
            )
        ]
    digests: dict[str, str] = {}
    hits = []
    for rule in rules:
        digest = digests.get(rule.key)
        if digest is None:
            identity = keys.identity(request, rule.key, config.trusted, user)
            digest = digests[rule.key] = keys.digest(identity)
        hits.append(
            Hit(
                f"rl:{{{digest}}}:{rule.key_suffix}",
                rule.algorithm,
                rule.limit,
                rule.mode == "enforce",
            )
        )
    return hits


_limiter = RateLimiter()


def get_rate_limiter() -> RateLimiter:
    """The process's ``RateLimiter`` (public API; also exported by ``resilience.middleware``)."""
    return _limiter


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("RESILIENCE", "CACHES"):
        _limiter.reload_settings()
