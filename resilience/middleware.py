"""``RateLimitMiddleware``, ``get_rate_limiter`` and the ``@rate_limit`` view decorator.

Install after ``django.contrib.auth.middleware.AuthenticationMiddleware`` (rules keyed on
``user`` need ``request.user``; resilience.W003 warns otherwise) and switch on with
``RESILIENCE["RATE_LIMIT_ENABLED"] = True``. Switched off, the middleware passes requests
straight through.

Which rules apply to a request, in order of precedence:

1. Paths starting with one of ``RATE_LIMIT_EXEMPT_PATHS`` are never limited.
2. Database rules (``RateLimitRule``, edited in admin) win over rules declared in code
   (``get_rate_limiter().configure_endpoint(...)``) on the same path pattern: when any database
   rule exists on a pattern, the code rules on that pattern are ignored. To switch a code rule off
   from the admin, add a database rule on its path with mode ``off``.
3. Rules in mode ``off`` are ignored; rules whose methods exclude the request's are ignored.
4. The most specific pattern with rules left wins (an exact path beats a prefix, a longer prefix
   beats a shorter); all its rules apply, counted all-or-nothing.
5. Nothing matched: the default limit (``RATE_LIMIT_DEFAULT_CALLS`` per
   ``RATE_LIMIT_DEFAULT_WINDOW_SECONDS``, per client IP, one counter for all unmatched paths), or
   no limit when ``RATE_LIMIT_DEFAULT_CALLS`` is None.

``@rate_limit(...)`` rules belong to a view, not a path, and are checked by the decorator in
addition to whatever the middleware applied (a second check, with its own counter).

Responses: see ``resilience.ratelimit.headers`` (429 JSON with ``Retry-After`` and the draft
``RateLimit`` headers; informational headers on allowed responses too). When the backend cannot be
reached the request is let through (``RATE_LIMIT_FAIL_OPEN`` True, the default) or answered with
a 503 JSON body and ``Retry-After`` (False); never a 500, and one log line per interval.

Sync and async: the middleware adapts to the handler chain (``sync_capable`` and
``async_capable``); both paths share ``RateLimiter``'s decision code, and the async path reaches
Redis through ``redis.asyncio`` and the database (only to reload changed rules) through
``sync_to_async``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from resilience.conf import resilience_settings
from resilience.ratelimit.headers import apply_headers, refused_response
from resilience.ratelimit.limiter import RateLimiter, get_rate_limiter, make_rule

__all__ = ["RateLimitMiddleware", "RateLimiter", "get_rate_limiter", "rate_limit"]


class RateLimitMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.limiter = get_rate_limiter()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if not self.limiter.config.enabled:
            return self.get_response(request)
        decision = self.limiter.check(request)
        if not decision.allowed:
            return refused_response(decision)
        return apply_headers(self.get_response(request), decision)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if not self.limiter.config.enabled:
            return await self.get_response(request)
        decision = await self.limiter.acheck(request)
        if not decision.allowed:
            return refused_response(decision)
        return apply_headers(await self.get_response(request), decision)


def rate_limit(
    *,
    calls: int,
    window_seconds: int,
    key: str = "ip",
    key_prefix: str = "",
    algorithm: str = "sliding_window",
    methods: str | Iterable[str] | None = None,
    mode: str = "enforce",
    name: str | None = None,
) -> Callable:
    """Limit one view, sync or async: ``@rate_limit(calls=10, window_seconds=60, key="user")``.

    The rule is validated when the module is imported (``ValueError`` naming the argument).
    ``methods`` limits only those methods. Honours ``RATE_LIMIT_ENABLED``. The rule's counter is
    the view's own unless ``key_prefix`` names a shared one.
    """

    def decorator(view: Callable) -> Callable:
        rule = make_rule(
            path="/",
            calls=calls,
            window_seconds=window_seconds,
            key=key,
            key_prefix=key_prefix,
            algorithm=algorithm,
            methods=methods,
            mode=mode,
            name=name or f"{view.__module__}.{view.__qualname__}",
            source="decorator",
        )
        rules = (rule,)
        if rule.mode == "off":
            return view

        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if not resilience_settings.RATE_LIMIT_ENABLED or not rule.applies_to_method(
                    request.method or "GET"
                ):
                    return await view(request, *args, **kwargs)
                decision = await get_rate_limiter().acheck(request, rules)
                if not decision.allowed:
                    return refused_response(decision)
                return apply_headers(await view(request, *args, **kwargs), decision)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if not resilience_settings.RATE_LIMIT_ENABLED or not rule.applies_to_method(
                request.method or "GET"
            ):
                return view(request, *args, **kwargs)
            decision = get_rate_limiter().check(request, rules)
            if not decision.allowed:
                return refused_response(decision)
            return apply_headers(view(request, *args, **kwargs), decision)

        return wrapper

    return decorator
