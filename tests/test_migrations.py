import importlib
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from resilience.models import BreakerPolicy


@pytest.mark.django_db
def test_migrations__seed_the_memorygate_policy_from_the_settings_defaults():
    policy = BreakerPolicy.objects.get(name="memorygate")
    assert policy.enabled is True
    assert (
        policy.failure_threshold,
        policy.timeout_seconds,
        policy.half_open_max_calls,
        policy.success_threshold,
    ) == (5, 60, 3, 2)
    assert policy.override == ""


@pytest.mark.django_db(transaction=True)
def test_migrations__seed_follows_settings_and_is_reversible(settings):
    executor = MigrationExecutor(connection)
    executor.migrate([("resilience", "0001_initial")])
    assert not BreakerPolicy.objects.filter(name="memorygate").exists()

    settings.RESILIENCE = {**settings.RESILIENCE, "MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": 9}
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes("resilience"))
    assert BreakerPolicy.objects.get(name="memorygate").failure_threshold == 9


@pytest.mark.django_db
def test_migrations__seeding_again_leaves_an_edited_policy_alone():
    seed = importlib.import_module("resilience.migrations.0002_seed_memorygate_policy")
    BreakerPolicy.objects.filter(name="memorygate").update(failure_threshold=4)
    # RunPython hands the function a schema editor; the seed only reads its connection.
    seed.seed_memorygate_policy(django_apps, SimpleNamespace(connection=connection))
    assert BreakerPolicy.objects.get(name="memorygate").failure_threshold == 4
    assert BreakerPolicy.objects.count() == 1
