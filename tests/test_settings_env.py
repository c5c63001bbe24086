import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from asyncgate_site import env

BASE = Path("/srv/asyncgate")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_env_bool__accepts_the_usual_spellings(raw, expected):
    assert env.env_bool("DEBUG", not expected, {"DEBUG": raw}) is expected


def test_env_bool__unset_or_blank_gives_the_default():
    assert env.env_bool("DEBUG", True, {}) is True
    assert env.env_bool("DEBUG", False, {"DEBUG": "  "}) is False


def test_env_bool__malformed_value_names_the_variable():
    with pytest.raises(ImproperlyConfigured, match="DEBUG is 'maybe'"):
        env.env_bool("DEBUG", False, {"DEBUG": "maybe"})


def test_env_list__splits_on_commas_and_rejects_blank_items():
    assert env.env_list("ALLOWED_HOSTS", [], {"ALLOWED_HOSTS": "a.example, b.example"}) == [
        "a.example",
        "b.example",
    ]
    with pytest.raises(ImproperlyConfigured, match=r"ALLOWED_HOSTS .* empty item"):
        env.env_list("ALLOWED_HOSTS", [], {"ALLOWED_HOSTS": "a.example,,b.example"})


def test_env_int__parses_checks_minimum_and_accepts_none():
    assert env.env_int("N", 100, {"N": "50"}) == 50
    assert env.env_int("N", 100, {"N": "none"}) is None
    with pytest.raises(ImproperlyConfigured, match="N is 'ten'"):
        env.env_int("N", 100, {"N": "ten"})
    with pytest.raises(ImproperlyConfigured, match="N is 0; minimum 1"):
        env.env_int("N", 100, {"N": "0"})


def test_env_choice__rejects_unknown_backends():
    assert env.env_choice("B", "memory", ("memory", "redis"), {"B": "redis"}) == "redis"
    with pytest.raises(
        ImproperlyConfigured, match="B is 'memcached'; expected one of memory, redis"
    ):
        env.env_choice("B", "memory", ("memory", "redis"), {"B": "memcached"})


def test_env_url__requires_http_and_strips_the_trailing_slash():
    assert env.env_url("MEMORYGATE_URL", {"MEMORYGATE_URL": "http://mg:8080/"}) == "http://mg:8080"
    assert env.env_url("MEMORYGATE_URL", {}) is None
    with pytest.raises(ImproperlyConfigured, match="MEMORYGATE_URL"):
        env.env_url("MEMORYGATE_URL", {"MEMORYGATE_URL": "mg:8080"})


def test_env_mapping__parses_pairs_and_rejects_malformed_or_repeated_items():
    assert env.env_mapping("KEYS", {"KEYS": "k1=t1, k2=t2"}) == {"k1": "t1", "k2": "t2"}
    with pytest.raises(ImproperlyConfigured, match="KEYS: item 2 is not of the form key=value"):
        env.env_mapping("KEYS", {"KEYS": "k1=t1,oops"})
    with pytest.raises(ImproperlyConfigured, match="KEYS: item 2 repeats"):
        env.env_mapping("KEYS", {"KEYS": "k1=t1,k1=t2"})


def test_database_from_url__sqlite_absolute_relative_and_memory():
    absolute = env.database_from_url("sqlite:////var/db/app.sqlite3", base_dir=BASE)
    assert absolute == {"ENGINE": "django.db.backends.sqlite3", "NAME": Path("/var/db/app.sqlite3")}
    relative = env.database_from_url("sqlite:///db.sqlite3", base_dir=BASE)
    assert relative["NAME"] == BASE / "db.sqlite3"
    assert env.database_from_url("sqlite://:memory:", base_dir=BASE)["NAME"] == ":memory:"


def test_database_from_url__postgres_with_credentials_port_and_options():
    conf = env.database_from_url(
        "postgres://app:s%40cret@db.internal:6432/asyncgate?sslmode=require", base_dir=BASE
    )
    assert conf["ENGINE"] == "django.db.backends.postgresql"
    assert (conf["NAME"], conf["USER"], conf["PASSWORD"]) == ("asyncgate", "app", "s@cret")
    assert (conf["HOST"], conf["PORT"]) == ("db.internal", "6432")
    assert conf["OPTIONS"] == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/app", "scheme 'mysql'"),
        ("postgres://postgres@127.0.0.1:5432/", "names no database"),
        ("postgres://postgres@127.0.0.1:99999/test", "invalid port"),
        ("postgres://postgres@127.0.0.1/test?conn_max_age=abc", "conn_max_age='abc'"),
        ("sqlite://db.sqlite3", "an SQLite URL has no host"),
    ],
)
def test_database_from_url__malformed_urls_name_the_variable(url, message):
    with pytest.raises(ImproperlyConfigured, match=message) as excinfo:
        env.database_from_url(url, base_dir=BASE)
    assert "DATABASE_URL" in str(excinfo.value)


def test_redis_url__rejects_other_schemes_without_echoing_the_value():
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env.redis_url("REDIS_URL", {"REDIS_URL": "http://:hunter2@cache:6379"})
    assert "REDIS_URL" in str(excinfo.value)
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://cache:abc/0", "invalid port"),
        ("redis://cache:6379/notadb", "names database 'notadb'"),
    ],
)
def test_redis_url__malformed_port_or_database_names_the_variable(url, message):
    with pytest.raises(ImproperlyConfigured, match=message) as excinfo:
        env.redis_url("REDIS_URL", {"REDIS_URL": url})
    assert "REDIS_URL" in str(excinfo.value)
    assert env.redis_url("REDIS_URL", {"REDIS_URL": "redis://cache:6379/2"})


def test_env_api_keys__maps_keys_to_tenant_uuids_without_echoing_a_key():
    tenant = "6f1c1c52-8f7e-4a53-9d0c-8c7f0e0b5b11"
    keys = env.env_api_keys("KEYS", {"KEYS": f"k1={tenant}"})
    assert keys == {"k1": uuid.UUID(tenant)}
    with pytest.raises(ImproperlyConfigured, match="item 2 maps its key to 'nope'") as excinfo:
        env.env_api_keys("KEYS", {"KEYS": f"k1={tenant},secret-key=nope"})
    assert "secret-key" not in str(excinfo.value)


def test_env_log_level__accepts_level_names_only():
    assert env.env_log_level("LEVEL", "INFO", {"LEVEL": "debug"}) == "DEBUG"
    with pytest.raises(ImproperlyConfigured, match="LEVEL is 'LOUD'"):
        env.env_log_level("LEVEL", "INFO", {"LEVEL": "loud"})


def _python(code: str, environ: dict[str, str]) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose environment is ``environ`` and nothing else."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", **environ},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


SETTINGS = {"DJANGO_SETTINGS_MODULE": "asyncgate_site.settings"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEBUG", "sometimes"),
        ("DATABASE_URL", "oracle://x/y"),
        ("RATE_LIMIT_BACKEND", "disk"),
        ("MEMORYGATE_URL", "memorygate"),
        ("ASYNCGATE_API_KEYS", "no-equals-sign"),
        ("ASYNCGATE_API_KEYS", "demo=not-a-uuid"),
        ("RESILIENCE_LOG_LEVEL", "LOUD"),
        ("REDIS_URL", "redis://cache:abc/0"),
    ],
)
def test_settings__malformed_environment_stops_startup_naming_the_variable(variable, value):
    result = _python("import django; django.setup()", {**SETTINGS, variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr


def test_settings__redis_url_switches_the_default_cache_to_django_redis():
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.CACHES['default']['BACKEND'], settings.RESILIENCE['RATE_LIMIT_BACKEND'])"
    )
    result = _python(code, {**SETTINGS, "REDIS_URL": "redis://127.0.0.1:6379/3"})
    assert result.stdout.split() == ["django_redis.cache.RedisCache", "redis"], result.stderr


@pytest.mark.parametrize("module", ["asyncgate_site.wsgi", "asyncgate_site.asgi"])
def test_entry_points__refuse_the_development_secret_key_outside_debug(module):
    """gunicorn and uvicorn load these without running system checks."""
    refused = _python(f"import {module}", {"DEBUG": "false"})
    assert refused.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is the development fallback" in refused.stderr
    assert _python(f"import {module}", {"DEBUG": "true"}).returncode == 0, refused.stderr
    served = _python(f"import {module}", {"DEBUG": "false", "SECRET_KEY": "s" * 50})
    assert served.returncode == 0, served.stderr


def test_settings__metrics_token_comes_from_the_environment():
    code = (
        "import django; django.setup(); from resilience.conf import resilience_settings; "
        "print(resilience_settings.METRICS_TOKEN)"
    )
    result = _python(code, {**SETTINGS, "METRICS_TOKEN": "t" * 32})
    assert result.stdout.strip() == "t" * 32, result.stderr
