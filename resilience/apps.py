from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ResilienceConfig(AppConfig):
    name = "resilience"
    verbose_name = _("Resilience")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registration by import: system checks and signal receivers, nothing else.
        from resilience import checks, signals  # noqa: F401
        from resilience import metrics as _metrics  # noqa: F401  (Prometheus receivers)
        from resilience import registry as _rules  # noqa: F401  (rule-saved receivers)
        from resilience.breaker import registry  # noqa: F401  (policy-saved receivers)
