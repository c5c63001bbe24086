"""Response headers and bodies of the rate limiter.

On every limited path (allowed or refused) the response describes the rule with the least quota
left, or the rule that refused it:

* ``RateLimit-Policy`` and ``RateLimit`` as in the IETF draft *RateLimit header fields for HTTP*
  (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy: "name";q=<calls>;w=<window>`` for
  every enforced rule on the path, ``RateLimit: "name";r=<remaining>;t=<seconds to reset>``.
* ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (seconds from now
  until the full quota is back, not an epoch), for clients that predate the draft.
* Refused: ``429`` with ``Retry-After`` (whole seconds, rounded up, never early) and a JSON body
  naming the rule.

Backend unreachable with ``RATE_LIMIT_FAIL_OPEN`` False: ``503`` with ``Retry-After`` and a JSON
body. 503 rather than 429 because the client did nothing wrong; the service cannot tell whether
it is within its limits, and a 503 is what clients and load balancers already retry.
"""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse

from resilience.ratelimit.limiter import Decision

UNAVAILABLE_RETRY_AFTER = 5


def apply_headers(response: HttpResponse, decision: Decision) -> HttpResponse:
    rule = decision.rule
    if rule is None:
        return response
    policies = decision.policies
    remaining, reset = str(decision.remaining), str(decision.reset)
    policy = (
        rule.policy_item if len(policies) == 1 else ", ".join(r.policy_item for r in policies)
    )
    store = getattr(getattr(response, "headers", None), "_store", None)
    if not isinstance(store, dict):
        response["RateLimit-Policy"] = policy
        response["RateLimit"] = f"{rule.quoted_name};r={remaining};t={reset}"
        response["X-RateLimit-Limit"] = str(rule.calls)
        response["X-RateLimit-Remaining"] = remaining
        response["X-RateLimit-Reset"] = reset
        if not decision.allowed:
            response["Retry-After"] = str(decision.retry_after)
        return response
    # Every name and value here is printable ASCII by construction (rule names are quoted as
    # structured-field strings), so the per-header charset validation of
    # HttpResponse.__setitem__, a quarter of the middleware's cost, is skipped. The store is
    # keyed by the lower-cased name.
    store["ratelimit-policy"] = ("RateLimit-Policy", policy)
    store["ratelimit"] = ("RateLimit", f"{rule.quoted_name};r={remaining};t={reset}")
    store["x-ratelimit-limit"] = ("X-RateLimit-Limit", rule.calls_text)
    store["x-ratelimit-remaining"] = ("X-RateLimit-Remaining", remaining)
    store["x-ratelimit-reset"] = ("X-RateLimit-Reset", reset)
    if not decision.allowed:
        store["retry-after"] = ("Retry-After", str(decision.retry_after))
    return response


def refused_response(decision: Decision) -> HttpResponse:
    if decision.unavailable:
        response = JsonResponse(
            {
                "error": "rate_limiter_unavailable",
                "detail": "Rate limiting is unavailable; the request was not processed.",
            },
            status=503,
        )
        response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response
    rule = decision.rule
    assert rule is not None  # a refusal always names its rule
    response = JsonResponse(
        {
            "error": "rate_limited",
            "detail": f"Too many requests: {rule.rate_display}. Retry in {decision.retry_after} s.",
            "rule": rule.name,
            "limit": rule.calls,
            "window_seconds": rule.window_seconds,
            "retry_after": decision.retry_after,
        },
        status=429,
    )
    return apply_headers(response, decision)
