"""The three tables staff and the drain work with.

``RateLimitRule`` and ``BreakerPolicy`` hold policy numbers that staff edit in admin; the request
path never queries them (it reads in-process snapshots, see ``resilience.registry``).
``BufferedReceipt`` is the durable buffer of receipts MemoryGate has not stored yet.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from resilience.signals import policy_rows_changed
from resilience.validators import validate_client_key, validate_methods, validate_rule_path

ONE_DAY_SECONDS = 86_400
# A window longer than this is almost always a mistake (a quota, not a rate limit).
MAX_WINDOW_SECONDS = 31 * ONE_DAY_SECONDS


class Algorithm(models.TextChoices):
    SLIDING_WINDOW = "sliding_window", _("Sliding window")
    FIXED_WINDOW = "fixed_window", _("Fixed window")
    TOKEN_BUCKET = "token_bucket", _("Token bucket (GCRA)")


class Mode(models.TextChoices):
    ENFORCE = "enforce", _("Enforce")
    SHADOW = "shadow", _("Shadow (count and log, never block)")
    OFF = "off", _("Off")


class PolicyQuerySet(models.QuerySet):
    """Bulk writes that announce themselves (``signals.policy_rows_changed``), so staff's
    policy numbers reach the running fleet however they were written, not only by ``save()``.

    ``delete()`` needs nothing: it sends ``post_delete`` per row while anyone listens.
    """

    def update(self, **kwargs: object) -> int:
        with transaction.atomic(using=self.db, savepoint=False):
            pks = list(self.values_list("pk", flat=True))
            count = super().update(**kwargs)
        self._announce(pks)
        return count

    def bulk_create(self, objs, *args, **kwargs):
        created = super().bulk_create(objs, *args, **kwargs)
        self._announce([obj.pk for obj in created if obj.pk is not None])
        return created

    def bulk_update(self, objs, *args, **kwargs):
        objs = list(objs)
        count = super().bulk_update(objs, *args, **kwargs)
        self._announce([obj.pk for obj in objs])
        return count

    def _announce(self, pks: list) -> None:
        if pks:
            policy_rows_changed.send(sender=self.model, using=self.db, pks=pks)


class RateLimitRule(models.Model):
    """A limit on one path (exact, or a ``/prefix/*``) for one way of identifying clients."""

    name = models.CharField(max_length=100, unique=True)
    path = models.CharField(
        max_length=200,
        validators=[validate_rule_path],
        help_text=_("Exact path such as /v1/tasks, or a prefix such as /v1/*."),
    )
    methods = models.CharField(
        max_length=100,
        blank=True,
        help_text=_("Comma-separated HTTP methods, e.g. POST,PUT. Blank: every method."),
    )
    calls = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text=_("Requests allowed per window.")
    )
    window_seconds = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_WINDOW_SECONDS)],
        help_text=_("Length of the window in seconds. Over a day needs a note saying why."),
    )
    key = models.CharField(
        max_length=100,
        default="ip",
        validators=[validate_client_key],
        help_text=_("What identifies a client: ip, user, user_or_ip, api_key or header:<Name>."),
    )
    key_prefix = models.CharField(
        max_length=100,
        blank=True,
        help_text=_("Counters of rules with the same prefix are shared; blank: the rule's own."),
    )
    algorithm = models.CharField(
        max_length=20, choices=Algorithm.choices, default=Algorithm.SLIDING_WINDOW
    )
    mode = models.CharField(
        max_length=10,
        choices=Mode.choices,
        default=Mode.ENFORCE,
        help_text=_(
            "Shadow: counted and logged, never blocks. Off: ignored as if deleted, so requests "
            "on this path fall to the next broader rule or the default limit; to stop limiting "
            "a path, shadow its rule instead."
        ),
    )
    notes = models.TextField(blank=True, help_text=_("Why this limit exists."))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PolicyQuerySet.as_manager()

    class Meta:
        ordering = ("path", "name")
        verbose_name = _("rate limit rule")
        verbose_name_plural = _("rate limit rules")
        indexes = [models.Index(fields=["path"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.path}: {self.rate_display})"

    @property
    def rate_display(self) -> str:
        return f"{self.calls} per {self.window_seconds} s"

    @property
    def is_prefix(self) -> bool:
        return self.path.endswith("/*")

    def clean(self) -> None:
        errors: dict[str, list[ValidationError]] = {}
        try:
            self.methods = validate_methods(self.methods)
        except ValidationError as exc:
            errors.setdefault("methods", []).append(exc)
        if (
            self.window_seconds is not None
            and self.window_seconds > ONE_DAY_SECONDS
            and not (self.notes or "").strip()
        ):
            errors.setdefault("notes", []).append(
                ValidationError(
                    _("A window over a day (%(seconds)s s) needs a note saying why."),
                    code="long_window",
                    params={"seconds": self.window_seconds},
                )
            )
        if errors:
            raise ValidationError(errors)


class BreakerOverride(models.TextChoices):
    NONE = "", _("None (automatic)")
    FORCE_OPEN = "force_open", _("Forced open")
    FORCE_CLOSED = "force_closed", _("Forced closed")


class BreakerPolicy(models.Model):
    """Thresholds of one circuit breaker; ``memorygate`` is seeded from settings."""

    name = models.SlugField(max_length=100, unique=True)
    enabled = models.BooleanField(
        default=True, help_text=_("Off: calls go straight through, with no breaker.")
    )
    failure_threshold = models.PositiveIntegerField(
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(10_000)],
        help_text=_("Consecutive failures that open the circuit."),
    )
    timeout_seconds = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1), MaxValueValidator(ONE_DAY_SECONDS)],
        help_text=_("Seconds the circuit stays open before probing."),
    )
    half_open_max_calls = models.PositiveIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(1_000)],
        help_text=_("Probes in flight at once while half-open, across the fleet."),
    )
    success_threshold = models.PositiveIntegerField(
        default=2,
        validators=[MinValueValidator(1), MaxValueValidator(1_000)],
        help_text=_("Consecutive probe successes that close the circuit."),
    )
    override = models.CharField(
        max_length=20,
        choices=BreakerOverride.choices,
        blank=True,
        default=BreakerOverride.NONE,
        help_text=_("An operator override that holds fleet-wide until cleared."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PolicyQuerySet.as_manager()

    class Meta:
        ordering = ("name",)
        verbose_name = _("breaker policy")
        verbose_name_plural = _("breaker policies")

    def __str__(self) -> str:
        return self.name


class ReceiptType(models.TextChoices):
    TASK_ASSIGNED = "task.assigned"
    TASK_ACCEPTED = "task.accepted"
    TASK_STARTED = "task.started"
    TASK_PROGRESS = "task.progress"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    TASK_CANCELED = "task.canceled"
    TASK_RETRY_SCHEDULED = "task.retry_scheduled"
    TASK_RESULT_READY = "task.result_ready"
    LEASE_EXPIRED = "lease.expired"
    RECEIPT_ACKNOWLEDGED = "receipt.acknowledged"
    SYSTEM_ANOMALY = "system.anomaly"


class PrincipalKind(models.TextChoices):
    AGENT = "agent"
    WORKER = "worker"
    SERVICE = "service"
    SYSTEM = "system"
    HUMAN = "human"


class ReceiptStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    IN_FLIGHT = "in_flight", _("In flight")
    DELIVERED = "delivered", _("Delivered")
    DEAD = "dead", _("Dead")


class BufferedReceiptQuerySet(models.QuerySet["BufferedReceipt"]):
    def due(self, now=None) -> BufferedReceiptQuerySet:
        """Rows a drainer may claim: pending and due, or in flight under an expired lease."""
        now = now or timezone.now()
        return self.filter(
            Q(status=ReceiptStatus.PENDING, next_attempt_at__lte=now)
            | Q(status=ReceiptStatus.IN_FLIGHT, lease_expires_at__lte=now)
        )


class BufferedReceipt(models.Model):
    """A receipt MemoryGate has not stored yet (or refused), with its delivery bookkeeping.

    ``payload`` is the exact JSON body sent to MemoryGate, so a retry sends what the first
    attempt would have sent, under the same ``receipt_id`` (the idempotency key).
    """

    receipt_id = models.UUIDField(unique=True, editable=False)
    tenant_id = models.UUIDField(db_index=True)
    receipt_type = models.CharField(max_length=40, choices=ReceiptType.choices)
    task_id = models.UUIDField(null=True, blank=True)
    lease_id = models.UUIDField(null=True, blank=True)
    payload = models.JSONField()
    status = models.CharField(
        max_length=10, choices=ReceiptStatus.choices, default=ReceiptStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = BufferedReceiptQuerySet.as_manager()

    class Meta:
        ordering = ("next_attempt_at", "id")
        verbose_name = _("buffered receipt")
        verbose_name_plural = _("buffered receipts")
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="receipt_claim_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="receipt_lease_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.receipt_type} {self.receipt_id} ({self.status})"
