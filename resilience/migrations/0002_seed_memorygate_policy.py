from django.db import migrations

POLICY_NAME = "memorygate"


def seed_memorygate_policy(apps, schema_editor):
    """Create the ``memorygate`` policy from the settings defaults, once; staff edit it after."""
    from resilience.conf import resilience_settings

    BreakerPolicy = apps.get_model("resilience", "BreakerPolicy")
    BreakerPolicy.objects.using(schema_editor.connection.alias).get_or_create(
        name=POLICY_NAME,
        defaults={
            "enabled": resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_ENABLED,
            "failure_threshold": resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD,
            "timeout_seconds": resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_TIMEOUT_SECONDS,
            "half_open_max_calls": resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS,
            "success_threshold": resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_SUCCESS_THRESHOLD,
        },
    )


def remove_memorygate_policy(apps, schema_editor):
    BreakerPolicy = apps.get_model("resilience", "BreakerPolicy")
    BreakerPolicy.objects.using(schema_editor.connection.alias).filter(name=POLICY_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("resilience", "0001_initial")]

    operations = [migrations.RunPython(seed_memorygate_policy, remove_memorygate_policy)]
