import asyncio

import pytest

from resilience.exceptions import BackendUnavailable
from resilience.redis import async_script, get_async_client, sync_script, translate_errors

ECHO = "return {KEYS[1], ARGV[1]}"


def test_redis__sync_script_runs_on_the_aliased_server(redis_backend, redis_client):
    assert sync_script("default", ECHO)(keys=["k"], args=["v"]) == [b"k", b"v"]
    assert redis_client.script_exists(sync_script("default", ECHO).sha) == [True]


def test_redis__async_client_shares_the_server_and_loop(redis_backend, redis_client):
    async def scenario():
        result = await async_script("default", ECHO)(keys=["a"], args=["b"])
        await get_async_client("default").set("shared", "1")
        return result

    assert asyncio.run(scenario()) == [b"a", b"b"]
    assert redis_client.get("shared") == b"1"


def test_redis__connection_errors_become_backend_unavailable(private_redis_backend):
    private_redis_backend.stop()
    with (
        pytest.raises(BackendUnavailable, match="'default' is unreachable"),
        translate_errors("default"),
    ):
        sync_script("default", ECHO)(keys=["k"], args=["v"])


def test_redis__async_client_reads_location_and_pool_options_as_django_redis_does(
    redis_backend, redis_client, settings
):
    """A comma-separated LOCATION names the primary first; CONNECTION_POOL_KWARGS apply too."""
    cache = settings.CACHES["default"]
    settings.CACHES = {
        "default": {
            **cache,
            "LOCATION": f"{cache['LOCATION']},redis://127.0.0.1:1/0",
            "OPTIONS": {
                **cache.get("OPTIONS", {}),
                "CONNECTION_POOL_KWARGS": {"client_name": "ag"},
            },
        }
    }

    async def scenario():
        client = get_async_client("default")
        await client.set("through-async", "1")
        return await client.client_getname()

    assert asyncio.run(scenario()) == "ag"
    assert redis_client.get("through-async") == b"1"
