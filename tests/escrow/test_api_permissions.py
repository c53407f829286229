"""Who may do what: every role × every endpoint of the escrow API."""
from __future__ import annotations

import pytest

from escrow.models import BookingStatus, StatusSource
from escrow.state import transition

from .helpers import future_iso, wallet

pytestmark = pytest.mark.django_db

ROLES = ["customer", "provider", "stranger", "staff", "plain_user", "anonymous"]
UNKNOWN_TX = "0x" + "ab" * 32

# endpoint → expected status per role (same order as ROLES).
MATRIX = {
    "list": [200, 200, 200, 200, 403, 401],
    "create": [201, 201, 201, 403, 403, 401],
    "retrieve": [200, 200, 404, 200, 403, 401],
    "authorize-payment": [200, 403, 404, 403, 403, 401],
    "request-cancellation": [200, 200, 404, 403, 403, 401],
    "submit-transaction": [202, 202, 404, 403, 403, 401],
    "me": [200, 200, 200, 401, 401, 401],
    "logout": [204, 204, 204, 401, 401, 401],
}
CASES = [(endpoint, role, expected[i]) for endpoint, expected in MATRIX.items() for i, role in enumerate(ROLES)]


def _request(client, endpoint, booking):
    base = f"/api/bookings/{booking.uuid}/"
    if endpoint == "list":
        return client.get("/api/bookings/")
    if endpoint == "create":
        body = {"provider": wallet("someone-else").address, "amount": "5", "scheduled_at": future_iso()}
        return client.post("/api/bookings/", body, format="json")
    if endpoint == "retrieve":
        return client.get(base)
    if endpoint == "authorize-payment":
        return client.post(base + "authorize-payment/", format="json")
    if endpoint == "request-cancellation":
        return client.post(base + "request-cancellation/", {"reason": "plans changed"}, format="json")
    if endpoint == "submit-transaction":
        return client.post(base + "submit-transaction/", {"tx_hash": UNKNOWN_TX}, format="json")
    if endpoint == "me":
        return client.get("/api/auth/me/")
    if endpoint == "logout":
        return client.post("/api/auth/logout/", format="json")
    raise AssertionError(endpoint)


@pytest.mark.parametrize("endpoint,role,expected", CASES, ids=[f"{e}-{r}" for e, r, _ in CASES])
def test_permission_matrix(request, endpoint, role, expected, clients, customer, provider, make_booking):
    booking = make_booking(customer, provider)
    if endpoint == "request-cancellation":
        transition(booking, BookingStatus.PAID, source=StatusSource.CHAIN)
    if endpoint == "submit-transaction":
        request.getfixturevalue("chain_settings")  # a real node that has never seen UNKNOWN_TX
    response = _request(clients[role], endpoint, booking)
    assert response.status_code == expected, response.content
    if response.status_code != 204:
        assert response["Content-Type"].startswith("application/json")
    if expected == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_list_shows_each_wallet_its_own_bookings_and_staff_everything(
    clients, customer, provider, stranger, make_booking
):
    mine = make_booking(customer, provider)
    other = make_booking(stranger, wallet("provider-2"))

    def ids(role):
        response = clients[role].get("/api/bookings/")
        assert response.status_code == 200
        return {item["id"] for item in response.json()["results"]}

    assert ids("customer") == {str(mine.uuid)}
    assert ids("provider") == {str(mine.uuid)}
    assert ids("stranger") == {str(other.uuid)}
    assert ids("staff") == {str(mine.uuid), str(other.uuid)}


def test_a_revoked_token_no_longer_authenticates(clients):
    assert clients["customer"].post("/api/auth/logout/").status_code == 204
    response = clients["customer"].get("/api/bookings/")
    assert response.status_code == 401
    assert "sign in again" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer not-a-token", "Bearer " + "x" * 500],
    ids=["no-token", "two-tokens", "unknown-token", "overlong-token"],
)
def test_malformed_or_unknown_bearer_tokens_are_401(db, header):
    from rest_framework.test import APIClient

    response = APIClient().get("/api/bookings/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "detail" in response.json()


def test_an_expired_token_is_401(db, customer):
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.test import APIClient

    from escrow.wallet_tokens import issue_wallet_token

    issued = issue_wallet_token(customer.address, now=timezone.now() - timedelta(days=2))
    response = APIClient().get("/api/bookings/", HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    assert response.status_code == 401
