"""Settings of the AsyncGate demo site, read from the environment (see the README's table).

Embedded defaults run the site on one machine with nothing else: an SQLite file and local-memory
cache. ``DATABASE_URL`` and ``REDIS_URL`` move it onto PostgreSQL and Redis.
"""

from pathlib import Path

from asyncgate_site.env import (
    database_from_url,
    env_api_keys,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_log_level,
    env_str,
    env_url,
    redis_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

# The fallback exists only for development: asyncgate_site.E001 refuses it when DEBUG is off, and
# so do the WSGI and ASGI entry points, which servers load without running system checks.
DEVELOPMENT_SECRET_KEY = "django-insecure-asyncgate-development-only"
SECRET_KEY = env_str("SECRET_KEY", DEVELOPMENT_SECRET_KEY)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "resilience",
    "asyncgate_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "resilience.middleware.RateLimitMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "asyncgate_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "asyncgate_site.wsgi.application"
ASGI_APPLICATION = "asyncgate_site.asgi.application"

DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"), base_dir=BASE_DIR
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, for the test database: tests that start worker processes need them to
    # see the same rows. WAL lets readers proceed while a drainer writes.
    _sqlite_name = DATABASES["default"]["NAME"]
    if _sqlite_name != ":memory:":
        DATABASES["default"]["TEST"] = {"NAME": str(_sqlite_name) + ".test"}
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

REDIS_URL = redis_url()
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# API keys of the demo AsyncGate API, mapped to tenant UUIDs: "key=tenant-uuid,key2=...".
ASYNCGATE_API_KEYS = env_api_keys("ASYNCGATE_API_KEYS")

RESILIENCE = {
    "RATE_LIMIT_ENABLED": env_bool("RATE_LIMIT_ENABLED", False),
    "RATE_LIMIT_BACKEND": env_choice(
        "RATE_LIMIT_BACKEND", "redis" if REDIS_URL else "memory", ("memory", "redis")
    ),
    "RATE_LIMIT_DEFAULT_CALLS": env_int("RATE_LIMIT_DEFAULT_CALLS", 100),
    "RATE_LIMIT_DEFAULT_WINDOW_SECONDS": env_int("RATE_LIMIT_DEFAULT_WINDOW_SECONDS", 60),
    "RATE_LIMIT_FAIL_OPEN": env_bool("RATE_LIMIT_FAIL_OPEN", True),
    "RATE_LIMIT_TRUSTED_PROXIES": env_list("RATE_LIMIT_TRUSTED_PROXIES", []),
    "MEMORYGATE_URL": env_url("MEMORYGATE_URL"),
    "MEMORYGATE_API_KEY": env_str("MEMORYGATE_API_KEY"),
    "MEMORYGATE_TIMEOUT_SECONDS": env_float("MEMORYGATE_TIMEOUT_SECONDS", 0.5),
    "METRICS_TOKEN": env_str("METRICS_TOKEN"),
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "resilience": {
            "handlers": ["console"],
            "level": env_log_level("RESILIENCE_LOG_LEVEL", "INFO"),
        },
    },
}
