"""The OpenAPI 3 schema generates without a warning or error, documents every answer of every
write operation, and the docs page is served. tests/escrow/test_schema_fuzz.py holds the running
API to it."""
from __future__ import annotations

import uuid

import pytest
import yaml
from django.core.management import call_command
from django.urls import resolve
from drf_spectacular.generators import SchemaGenerator
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
        "/api/bookings/{booking_id}/dispute/",
        "/api/auth/nonce/",
        "/api/auth/verify/",
        "/api/referrals/invite-codes/",
        "/api/referrals/redeem/",
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


# -- what every write operation documents ---------------------------------------------------------
WRITE_METHODS = ("post", "put", "patch", "delete")
# These act on their URL alone and document no body; authorize-payment and nonce still read one
# (any field is refused with a 400), logout reads none.
NO_BODY = {
    "/api/bookings/{booking_id}/authorize-payment/", "/api/auth/nonce/", "/api/auth/logout/",
    "/api/referrals/invite-codes/",
}
READS_AN_UNDOCUMENTED_BODY = {
    "/api/bookings/{booking_id}/authorize-payment/", "/api/auth/nonce/", "/api/referrals/invite-codes/",
}


def _published_schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def _view(path: str, method: str):
    """The view instance serving `method` on `path`, as DRF sets it up for a request."""
    callback = resolve(path.replace("{booking_id}", str(uuid.uuid4()))).func
    view = callback.cls(**callback.initkwargs)
    if hasattr(callback, "actions"):
        view.action = callback.actions[method]
    return view


def _component(schema: dict, reference: dict) -> dict:
    return schema["components"]["schemas"][reference["$ref"].rsplit("/", 1)[1]]


def _write_operations(schema: dict):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method in WRITE_METHODS:
                yield path, method, operation


def test_every_write_operation_documents_its_body_its_success_and_its_refusals():
    schema = _published_schema()
    checked = []
    for path, method, operation in _write_operations(schema):
        label = f"{method.upper()} {path}"
        responses = operation["responses"]
        view = _view(path, method)
        if path in NO_BODY:
            assert "requestBody" not in operation, label
        else:
            body = operation["requestBody"]
            assert body["required"] is True, label
            assert list(body["content"]) == ["application/json"], label
            component = _component(schema, body["content"]["application/json"]["schema"])
            assert component["additionalProperties"] is False, label  # the strict serializers refuse others
            assert component["properties"] and component["required"], label

        successes = [code for code in responses if code.startswith("2")]
        assert successes, label
        for code in successes:
            assert (code == "204") == ("content" not in responses[code]), (label, code)

        expected = set()
        if path not in NO_BODY or path in READS_AN_UNDOCUMENTED_BODY:
            expected |= {"400", "413", "415"}
        if view.authentication_classes:
            expected.add("401")
        if "{booking_id}" in path:
            expected |= {"403", "404"}
        if view.get_throttles():
            expected.add("429")
        assert expected <= set(responses), (label, expected - set(responses))
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                assert response["description"], (label, code)
                assert "$ref" in response["content"]["application/json"]["schema"], (label, code)
        for code, header in (("401", "WWW-Authenticate"), ("429", "Retry-After"), ("503", "Retry-After")):
            if code in responses:
                assert responses[code]["headers"][header]["required"] is True, (label, code)
        checked.append(label)
    assert sorted(checked) == [
        "POST /api/auth/logout/",
        "POST /api/auth/nonce/",
        "POST /api/auth/verify/",
        "POST /api/bookings/",
        "POST /api/bookings/{booking_id}/authorize-payment/",
        "POST /api/bookings/{booking_id}/dispute/",
        "POST /api/bookings/{booking_id}/request-cancellation/",
        "POST /api/bookings/{booking_id}/submit-transaction/",
        "POST /api/referrals/invite-codes/",
        "POST /api/referrals/redeem/",
    ]


def test_a_booking_request_names_no_inviter_and_its_refusals_say_why():
    schema = _published_schema()
    operation = schema["paths"]["/api/bookings/"]["post"]
    request = _component(schema, operation["requestBody"]["content"]["application/json"]["schema"])
    assert "inviter" not in request["properties"]  # refused like any undeclared field (additionalProperties)
    assert "409" in operation["responses"]  # the unpaid-booking caps
    redeem = schema["paths"]["/api/referrals/redeem/"]["post"]["requestBody"]["content"]["application/json"]
    code = _component(schema, redeem["schema"])["properties"]["code"]
    assert code["pattern"] == "^[A-HJ-NP-Za-hj-np-z2-9]{10}$"


def test_responses_state_what_the_api_answers():
    components = _published_schema()["components"]["schemas"]
    booking = components["Booking"]["properties"]
    assert booking["inviter"]["nullable"] is True  # null when nobody invited the customer
    assert {"$ref": "#/components/schemas/BlankEnum"} in booking["status_before_cancellation"]["oneOf"]
    assert set(components["StatusChange"]["required"]) == set(components["StatusChange"]["properties"])
    assert components["BadRequest"]["oneOf"] == [
        {"$ref": "#/components/schemas/FieldErrors"},
        {"$ref": "#/components/schemas/Error"},
    ]


def test_the_page_parameter_is_a_page_number():
    operation = _published_schema()["paths"]["/api/bookings/"]["get"]
    [page] = [parameter for parameter in operation["parameters"] if parameter["name"] == "page"]
    assert page["schema"] == {"type": "integer", "minimum": 1}
