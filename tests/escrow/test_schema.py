"""The OpenAPI 3 schema generates without a warning or error and the docs page is served."""
from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient


def test_the_schema_generates_and_validates_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"
    # --fail-on-warn turns any drf-spectacular warning (and error) into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in [
        "/api/bookings/",
        "/api/bookings/{booking_id}/",
        "/api/bookings/{booking_id}/authorize-payment/",
        "/api/bookings/{booking_id}/request-cancellation/",
        "/api/bookings/{booking_id}/submit-transaction/",
        "/api/auth/nonce/",
        "/api/auth/verify/",
    ]:
        assert path in paths, path
    assert "409" in paths["/api/bookings/{booking_id}/authorize-payment/"]["post"]["responses"]
    assert "walletToken" in schema["components"]["securitySchemes"]


@pytest.mark.django_db
def test_schema_and_docs_are_served():
    client = APIClient()
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"openapi: 3" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content.lower()
