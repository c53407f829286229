import pytest
from django.test import Client

from bookme.health import refresh_chain_health

pytestmark = pytest.mark.django_db


def test_health_is_healthy_with_database_redis_and_chain(chain_settings, django_user_model):
    refresh_chain_health()  # the worker's job (bookme.tasks), every HEALTH_CHAIN_REFRESH_SECONDS
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("hana", password="staff-pass-123", is_staff=True))
    response = staff.get("/api/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["components"]["database"]["status"] == "healthy"
    assert body["components"]["redis"]["status"] == "healthy"
    assert body["components"]["rpc"]["head_block"] >= chain_settings.start_block


def test_health_degrades_when_rpc_is_down(settings):
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]  # discard port: nothing listens
    refresh_chain_health()
    response = Client().get("/api/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["components"]["rpc"] == {"status": "unhealthy"}


def test_metrics_endpoint_exports_prometheus_text():
    response = Client().get("/metrics")  # from 127.0.0.1, in METRICS_ALLOWED_ADDRESSES by default
    assert response.status_code == 200
    assert b"django_http_requests" in response.content


def test_openapi_schema_and_docs_render():
    client = Client()
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"openapi" in schema.content
    assert client.get("/api/docs/").status_code == 200
