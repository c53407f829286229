"""Browser clients work as they are (issue 16, item 5): paths answer with and without the trailing
slash (POST included, no redirect), a single-page app on an allowed origin passes CORS preflights,
and the typed data of an authorization verifies in ethers v6 as well as in eth_signTypedData_v4."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from escrow.models import BookingStatus, StatusSource
from escrow.signing import signer_address
from escrow.state import transition

from .helpers import wallet_client

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = "http://localhost:5173"


@pytest.fixture
def clients(db, customer):
    """The customer's wallet and an anonymous browser (the escrow conftest's full set costs two password hashes)."""
    return {"customer": wallet_client(customer), "anonymous": APIClient()}


# -- trailing slashes ------------------------------------------------------------------------
def _api_routes(patterns=None, prefix=""):
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _api_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.lstrip("^").startswith("api/"):
            yield route


def test_every_api_route_takes_an_optional_trailing_slash():
    """A route added with path("x/") would answer `x` with a redirect that drops a POST's body:
    use common.routes (OptionalSlashRouter, optional_slash_path)."""
    strict = [route for route in _api_routes() if not route.endswith("/?$")]
    assert strict == [], f"API routes without an optional slash (use common.routes): {strict}"


@pytest.mark.django_db
def test_get_and_post_answer_with_and_without_the_slash(clients, customer, provider, make_booking):
    booking = make_booking(customer, provider)
    for path in ("/api/bookings", "/api/bookings/", f"/api/bookings/{booking.uuid}", "/api/health/live"):
        response = clients["customer"].get(path)
        assert response.status_code == 200, (path, response.status_code)
    # The BookMe guide's path, as its clients POST it: signed, not redirected.
    for path in (f"/api/bookings/{booking.uuid}/authorize-payment", f"/api/bookings/{booking.uuid}/authorize-payment/"):
        response = clients["customer"].post(path, format="json")
        assert response.status_code == 200, (path, response.content)
        assert response.json()["primaryType"] == "BookingAuthorization"
    body = {"provider": provider.address, "amount": "5", "scheduled_at": booking.scheduled_at.isoformat()}
    assert clients["customer"].post("/api/bookings", body, format="json").status_code == 201
    assert clients["anonymous"].post("/api/auth/nonce", format="json").status_code == 201


@pytest.mark.django_db
def test_the_schema_shows_one_canonical_path_per_operation(clients):
    paths = clients["anonymous"].get("/api/schema", HTTP_ACCEPT="application/json").json()["paths"]
    assert "/api/bookings/{booking_id}/authorize-payment/" in paths
    assert not [path for path in paths if not path.endswith("/") or "?" in path]


# -- CORS --------------------------------------------------------------------------------------
def _preflight(client, path, origin):
    return client.options(
        path, HTTP_ORIGIN=origin, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )


@pytest.mark.django_db
def test_a_preflight_from_an_allowed_origin_passes_and_others_get_nothing(clients, settings, customer, provider,
                                                                           make_booking):
    settings.CORS_ALLOWED_ORIGINS = [FRONTEND]
    path = f"/api/bookings/{make_booking(customer, provider).uuid}/authorize-payment"
    allowed = _preflight(clients["anonymous"], path, FRONTEND)  # no token: a browser never sends one here
    assert allowed.status_code == 200
    assert allowed["Access-Control-Allow-Origin"] == FRONTEND
    assert {"authorization", "content-type"} <= {h.strip() for h in allowed["Access-Control-Allow-Headers"].split(",")}
    assert "POST" in allowed["Access-Control-Allow-Methods"]
    other = _preflight(clients["anonymous"], path, "https://evil.example")
    assert not [header for header in other.headers if header.lower().startswith("access-control-")]
    # The answers themselves carry the origin, refusals included, with the headers clients read.
    refused = clients["anonymous"].post(path, format="json", HTTP_ORIGIN=FRONTEND)
    assert refused.status_code == 401 and refused["Access-Control-Allow-Origin"] == FRONTEND
    assert "Retry-After" in refused["Access-Control-Expose-Headers"]
    signed = clients["customer"].post(path, format="json", HTTP_ORIGIN=FRONTEND)
    assert signed.status_code == 200 and signed["Access-Control-Allow-Origin"] == FRONTEND


def test_an_origin_with_a_path_stops_start_up_with_one_line_naming_the_variable():
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
           "BOOKME_READ_ENV_FILES": "0", "CORS_ALLOWED_ORIGINS": "http://localhost:5173/app"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "bookme: configuration error: CORS_ALLOWED_ORIGINS must be a comma-separated list of origins "
        "(http(s)://host[:port])")


# -- typed data for ethers v6 and eth_signTypedData_v4 -------------------------------------------
VERIFY_WITH_ETHERS = """
const { verifyTypedData } = require("ethers");
const out = JSON.parse(require("fs").readFileSync(0, "utf8")).map((answer) => {
  const e = answer.ethers;
  let v4 = "accepted";
  try { verifyTypedData(answer.domain, answer.types, answer.message, answer.signature); }
  catch (error) { v4 = error.shortMessage || error.message; }
  return { signer: verifyTypedData(e.domain, e.types, e.value, answer.signature), v4 };
});
console.log(JSON.stringify(out));
"""


@pytest.mark.django_db
def test_ethers_v6_verifies_the_backends_signatures_over_the_ethers_shape(clients, customer, provider, make_booking):
    payment = clients["customer"].post(
        f"/api/bookings/{make_booking(customer, provider).uuid}/authorize-payment", format="json").json()
    paid = make_booking(customer, provider)
    transition(paid, BookingStatus.PAID, source=StatusSource.CHAIN)
    cancellation = clients["customer"].post(
        f"/api/bookings/{paid.uuid}/request-cancellation", {"reason": "Grippe — désolé 🤒"}, format="json").json()
    for answer in (payment, cancellation):
        assert "EIP712Domain" in answer["types"]  # the v4 document stays as it was
        assert list(answer["ethers"]["types"]) == [answer["primaryType"]]
        assert answer["ethers"]["value"] == answer["message"] and answer["ethers"]["domain"] == answer["domain"]
    result = subprocess.run(
        ["node", "-e", VERIFY_WITH_ETHERS], cwd=ROOT, input=json.dumps([payment, cancellation]),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    verified = json.loads(result.stdout)
    assert [v["signer"] for v in verified] == [signer_address()] * 2
    assert all("ambiguous primary types" in v["v4"] for v in verified), verified  # why the ethers shape exists
