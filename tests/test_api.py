import json
import uuid

import pytest

TENANT = uuid.UUID("6f1c1c52-8f7e-4a53-9d0c-8c7f0e0b5b11")
KEY = "ag-test-key-1"


@pytest.fixture(autouse=True)
def api_keys(settings):
    settings.ASYNCGATE_API_KEYS = {KEY: str(TENANT)}


def post_task(client, body, **headers):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post("/v1/tasks", data=data, content_type="application/json", headers=headers)


@pytest.mark.django_db
def test_health__reports_database_and_cache(client):
    response = client.get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] is True
    assert body["cache"] is True


def test_health__degraded_when_the_cache_is_unreachable(client, private_redis_backend, db):
    private_redis_backend.stop()
    response = client.get("/v1/health")
    assert response.status_code == 503
    assert response.json()["cache"] is False


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}, {"Authorization": f"bearer  {KEY}"}],
)
def test_create_task__accepted_with_a_known_key(client, headers):
    response = post_task(client, {"task_type": "render.video", "payload": {"n": 1}}, **headers)
    assert response.status_code == 202
    body = response.json()
    assert uuid.UUID(body["task_id"])
    assert body["tenant_id"] == str(TENANT)
    assert body["status"] == "accepted"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"X-API-Key": ""},
        {"Authorization": "Basic " + KEY},
    ],
)
def test_create_task__missing_or_wrong_key_is_401_json(client, headers):
    response = post_task(client, {"task_type": "render.video"}, **headers)
    assert response.status_code == 401
    assert "API key" in response.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
        ({}, "task_type", "task_type is required"),
        ({"task_type": "Bad Type"}, "task_type", "task_type is required"),
        ({"task_type": 7}, "task_type", "task_type is required"),
        ({"task_type": "ok", "payload": [1]}, "payload", "payload must be a JSON object"),
        ({"task_type": "ok", "priority": 3}, "priority", "Unknown field: priority"),
    ],
)
def test_create_task__malformed_body_is_400_naming_the_field(client, body, field, message):
    response = post_task(client, body, **{"X-API-Key": KEY})
    assert response.status_code == 400
    payload = response.json()
    assert message in payload["error"]
    assert payload.get("field") == field


@pytest.mark.django_db
def test_create_task__only_post(client):
    assert client.get("/v1/tasks", headers={"X-API-Key": KEY}).status_code == 405
