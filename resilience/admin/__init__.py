"""The staff's room: one module per table, registered on import."""

from resilience.admin import breakers, receipts, rules, status  # noqa: F401
