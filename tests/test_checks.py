import pytest
from django.core.checks import run_checks
from django.test import override_settings

from asyncgate_site.checks import check_secret_key
from resilience.checks import check_settings


def ids(messages):
    return sorted(message.id for message in messages)


def with_resilience(settings, **values):
    settings.RESILIENCE = {**settings.RESILIENCE, **values}


def test_checks__a_sane_configuration_only_warns_about_the_unset_memorygate_url(settings):
    with_resilience(settings, MEMORYGATE_URL=None)
    assert ids(check_settings()) == ["resilience.W002"]
    with_resilience(settings, MEMORYGATE_URL="http://127.0.0.1:8765")
    assert check_settings() == []


def test_checks__unknown_key_is_e001(settings):
    settings.RESILIENCE = {"RATE_LIMIT_ENABLD": True}
    [error] = check_settings()
    assert error.id == "resilience.E001"
    assert "RATE_LIMIT_ENABLD" in error.msg


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("RATE_LIMIT_EXEMPT_PATHS", "/admin/", '["/admin/"]'),
        ("RATE_LIMIT_EXEMPT_PATHS", ["/admin/", 7], "list or tuple of strings"),
        ("RATE_LIMIT_EXEMPT_PATHS", ["admin/"], "'admin/', not a path prefix"),
        ("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8", '["10.0.0.0/8"]'),
    ],
)
def test_checks__a_list_setting_that_is_not_a_list_of_strings_is_e001(settings, key, value, says):
    """A bare string would be read character by character: "/admin/" would exempt every path."""
    with_resilience(settings, MEMORYGATE_URL="http://mg", **{key: value})
    [error] = check_settings()
    assert error.id == "resilience.E001"
    assert key in error.msg
    assert says in error.msg


def test_checks__unknown_backend_is_e002(settings):
    with_resilience(settings, RATE_LIMIT_BACKEND="memcached", MEMORYGATE_URL="http://mg")
    assert ids(check_settings()) == ["resilience.E002"]


def test_checks__redis_backend_on_a_non_django_redis_cache_is_e003(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with_resilience(settings, RATE_LIMIT_BACKEND="redis", MEMORYGATE_URL="http://mg")
    [error] = check_settings()
    assert error.id == "resilience.E003"
    assert "LocMemCache" in error.msg


def test_checks__redis_backend_on_a_missing_alias_is_e003(settings):
    with_resilience(
        settings,
        RATE_LIMIT_BACKEND="redis",
        RATE_LIMIT_CACHE_ALIAS="limits",
        MEMORYGATE_URL="http://mg",
    )
    [error] = check_settings()
    assert error.id == "resilience.E003"
    assert "missing" in error.msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("RATE_LIMIT_DEFAULT_CALLS", 0),
        ("RATE_LIMIT_DEFAULT_WINDOW_SECONDS", -5),
        ("MEMORYGATE_TIMEOUT_SECONDS", "fast"),
        ("MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", True),
    ],
)
def test_checks__out_of_range_numbers_are_e004(settings, key, value):
    with_resilience(settings, MEMORYGATE_URL="http://mg", **{key: value})
    [error] = check_settings()
    assert error.id == "resilience.E004"
    assert key in error.msg


def test_checks__default_calls_none_means_no_default_limit_and_is_fine(settings):
    with_resilience(settings, MEMORYGATE_URL="http://mg", RATE_LIMIT_DEFAULT_CALLS=None)
    assert check_settings() == []


def test_checks__a_bad_trusted_proxy_is_e005(settings):
    with_resilience(
        settings, MEMORYGATE_URL="http://mg", RATE_LIMIT_TRUSTED_PROXIES=["10.0.0.0/8", "lan"]
    )
    [error] = check_settings()
    assert error.id == "resilience.E005"
    assert "'lan'" in error.msg


def test_checks__a_memorygate_url_that_is_not_http_is_e006(settings):
    with_resilience(settings, MEMORYGATE_URL="ftp://mg")
    assert ids(check_settings()) == ["resilience.E006"]


def test_checks__enabled_without_the_middleware_is_w001(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "RateLimitMiddleware" not in m]
    with_resilience(settings, MEMORYGATE_URL="http://mg", RATE_LIMIT_ENABLED=True)
    assert ids(check_settings()) == ["resilience.W001"]


def test_checks__development_secret_key_refused_outside_debug(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = settings.DEVELOPMENT_SECRET_KEY
    assert ids(check_secret_key()) == ["asyncgate_site.E001"]
    # Registered with Django's framework, so `manage.py check` and runserver refuse it too.
    assert "asyncgate_site.E001" in ids(run_checks(tags=["security"]))
    settings.DEBUG = True
    assert check_secret_key() == []
    settings.DEBUG = False
    settings.SECRET_KEY = "a-real-secret-from-the-environment"
    assert check_secret_key() == []


def test_checks__registered_with_djangos_framework(settings):
    with override_settings(RESILIENCE={"RATE_LIMIT_BACKEND": "disk"}):
        assert "resilience.E002" in ids(run_checks())
