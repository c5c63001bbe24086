"""Rate limiting: rules (``rules``), client identity (``keys``), algorithms, backends and the
limiter's decision (``limiter``). The Django edge lives in ``resilience.middleware`` and
``resilience.admin.rules``; the rule snapshot in ``resilience.registry``.
"""
