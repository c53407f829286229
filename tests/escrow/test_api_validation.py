"""Bad input to every escrow endpoint: always a 4xx JSON answer naming the field and the reason, never a 500."""
from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from escrow.models import Booking, BookingStatus, StatusSource
from escrow.state import transition

from .helpers import bind_to_inviter, future_iso, past_iso, wallet

pytestmark = pytest.mark.django_db

GOOD_PROVIDER = wallet("provider-for-validation").address
GOOD_INVITER = wallet("inviter-for-validation").address


def _mixed_case_with_bad_checksum(address: str) -> str:
    body = address[2:]
    flipped = "".join(c.swapcase() if c.isalpha() else c for c in body)
    assert flipped != body and flipped.lower() != flipped and flipped.upper() != flipped
    return "0x" + flipped


def create_body(**overrides):
    body = {"provider": GOOD_PROVIDER, "amount": "100.50", "scheduled_at": future_iso(), "description": "x"}
    for key, value in overrides.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()

# (case id, body, field named in the error)
CREATE_CASES = [
    ("provider-missing", create_body(provider=_DROP), "provider"),
    ("provider-not-hex", create_body(provider="0xZZ" + "0" * 38), "provider"),
    ("provider-short", create_body(provider="0x1234"), "provider"),
    ("provider-no-prefix", create_body(provider=GOOD_PROVIDER[2:]), "provider"),
    ("provider-bad-checksum", create_body(provider=_mixed_case_with_bad_checksum(GOOD_PROVIDER)), "provider"),
    ("provider-zero", create_body(provider="0x" + "0" * 40), "provider"),
    ("provider-number", create_body(provider=12345), "provider"),
    ("provider-null", create_body(provider=None), "provider"),
    ("provider-is-customer", None, "provider"),  # filled in by the test (the caller's own address)
    # The inviter is never named in a request (escrow.referrals), whatever it would be.
    ("inviter-bad", create_body(inviter="nobody"), "inviter"),
    ("inviter-is-provider", create_body(inviter=GOOD_PROVIDER), "inviter"),
    ("inviter-is-customer", None, "inviter"),
    ("inviter-another-wallet", create_body(inviter=GOOD_INVITER), "inviter"),
    ("inviter-null", create_body(inviter=None), "inviter"),
    ("amount-missing", create_body(amount=_DROP), "amount"),
    ("amount-zero", create_body(amount="0"), "amount"),
    ("amount-zero-int", create_body(amount=0), "amount"),
    ("amount-negative", create_body(amount="-1"), "amount"),
    ("amount-negative-int", create_body(amount=-5), "amount"),
    ("amount-seven-decimals", create_body(amount="1.1234567"), "amount"),
    ("amount-words", create_body(amount="ten"), "amount"),
    ("amount-float", create_body(amount=1.5), "amount"),
    ("amount-bool", create_body(amount=True), "amount"),
    ("amount-exponent", create_body(amount="1e3"), "amount"),
    ("amount-underscore", create_body(amount="1_000"), "amount"),
    ("amount-non-ascii-digits", create_body(amount="\u0661\u0660\u0660"), "amount"),
    ("amount-over-uint256", create_body(amount=2**256), "amount"),
    ("amount-over-uint256-string", create_body(amount=str(2**256)), "amount"),
    ("amount-empty", create_body(amount=""), "amount"),
    ("amount-null", create_body(amount=None), "amount"),
    ("amount-object", create_body(amount={"value": 1}), "amount"),
    ("amount-nan", create_body(amount="NaN"), "amount"),
    ("scheduled-missing", create_body(scheduled_at=_DROP), "scheduled_at"),
    ("scheduled-past", create_body(scheduled_at=past_iso()), "scheduled_at"),
    ("scheduled-naive", create_body(scheduled_at="2099-01-01T10:00:00"), "scheduled_at"),
    ("scheduled-garbage", create_body(scheduled_at="next tuesday"), "scheduled_at"),
    ("scheduled-too-far-ahead", create_body(scheduled_at="2999-01-01T10:00:00Z"), "scheduled_at"),
    ("scheduled-number", create_body(scheduled_at=1893456000), "scheduled_at"),
    ("scheduled-overflow", create_body(scheduled_at="9999-12-31T23:59:59-14:00"), "scheduled_at"),
    ("scheduled-bad-date", create_body(scheduled_at="2099-02-30T10:00:00Z"), "scheduled_at"),
    ("description-too-long", create_body(description="x" * 501), "description"),
    ("description-nul", create_body(description="a\x00b"), "description"),
    ("description-surrogate", create_body(description="\ud800"), "description"),
    ("description-number", create_body(description=5), "description"),  # the schema says string
    ("unknown-field", create_body(colour="red"), "colour"),
    ("platform-rate-not-choosable", create_body(platform_fee_rate=0), "platform_fee_rate"),
    ("inviter-rate-not-choosable", create_body(inviter_fee_rate=100), "inviter_fee_rate"),
    ("customer-not-choosable", create_body(customer=GOOD_INVITER), "customer"),
    ("body-is-a-list", [create_body()], "non_field_errors"),
    ("body-is-a-string", "provider", "non_field_errors"),
]


@pytest.mark.parametrize("case,body,field", CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
def test_create_refuses_bad_input_naming_the_field(clients, customer, case, body, field):
    if case == "provider-is-customer":
        body = create_body(provider=customer.address.lower())
    elif case == "inviter-is-customer":
        body = create_body(inviter=customer.address)
    # json.dumps escapes every non-ASCII character (lone surrogates included) as the wire would.
    response = clients["customer"].generic("POST", "/api/bookings/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert errors[field] and all(isinstance(reason, str) and reason for reason in errors[field])
    assert Booking.objects.count() == 0


@pytest.mark.parametrize(
    "raw,content_type,expected",
    [
        (b'{"provider": ', "application/json", 400),
        (b"\xff\xfe garbage", "application/json", 400),
        (b'{"amount": NaN}', "application/json", 400),
        (b"null", "application/json", 400),
        (b"provider=0x1", "application/x-www-form-urlencoded", 415),
        (b"<xml/>", "application/xml", 415),
        # Deep enough to overflow the C stack (and kill the process) at py_ecc's recursion limit.
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
        # An unknown key is echoed in the error; a lone surrogate in it must still render.
        (b'{"\\ud800": 1}', "application/json", 400),
        (b'{"description": "' + b"x" * 2_700_000 + b'"}', "application/json", 413),
    ],
    ids=["truncated-json", "not-utf8", "nan-literal", "null-body", "form-encoded", "xml", "nested-100000-deep",
         "surrogate-key", "over-upload-limit"],
)
@pytest.mark.parametrize(
    "path",
    ["/api/bookings/", "BOOKING/authorize-payment/", "BOOKING/request-cancellation/", "BOOKING/submit-transaction/",
     "/api/auth/verify/", "/api/auth/nonce/"],
)
def test_malformed_bodies_are_4xx_json_on_every_post_endpoint(
    clients, customer, provider, make_booking, raw, content_type, expected, path
):
    booking = make_booking(customer, provider)
    transition(booking, BookingStatus.PAID, source=StatusSource.CHAIN) if "cancellation" in path else None
    url = path.replace("BOOKING", f"/api/bookings/{booking.uuid}")
    response = clients["customer"].generic("POST", url, raw, content_type=content_type)
    assert response.status_code == expected, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()


def test_the_recursion_limit_is_pythons_default_after_setup():
    # py_ecc raises it to 100,000 on import; escrow's AppConfig puts it back (see escrow.parsers).
    import sys

    import eth_account  # noqa: F401

    assert sys.getrecursionlimit() == 1000


def test_create_accepts_lower_case_and_checksummed_addresses_and_normalises(clients, customer):
    bind_to_inviter(customer.address, GOOD_INVITER)
    body = create_body(provider=GOOD_PROVIDER.lower(), amount=100_500_000)
    response = clients["customer"].post("/api/bookings/", body, format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["provider"] == GOOD_PROVIDER
    assert data["inviter"] == GOOD_INVITER
    assert data["amount"] == "100500000" and data["amount_decimal"] == "100.500000"
    assert (data["platform_fee_rate"], data["inviter_fee_rate"]) == (500, 500)


def test_create_defaults_rates_without_inviter(clients, customer):
    response = clients["customer"].post("/api/bookings/", create_body(amount="100.50"), format="json")
    assert response.status_code == 201
    data = response.json()
    assert data["customer"] == customer.address
    assert data["inviter"] is None
    assert (data["platform_fee_rate"], data["inviter_fee_rate"]) == (1000, 0)
    assert data["status"] == "PENDING_PAYMENT"
    history = [(h["from_status"], h["to_status"], h["source"]) for h in data["status_history"]]
    assert history == [("", "PENDING_PAYMENT", "api")]


# -- actions on a booking -----------------------------------------------------------------
BOOKING_PATHS = ["", "authorize-payment/", "request-cancellation/", "submit-transaction/"]


@pytest.mark.parametrize("suffix", BOOKING_PATHS)
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", "00000000-0000-0000-0000-000000000000", "%20"])
def test_unknown_or_malformed_booking_ids_are_json_404(clients, suffix, bad_id):
    url = f"/api/bookings/{bad_id}/{suffix}"
    response = clients["customer"].get(url) if not suffix else clients["customer"].post(url, {}, format="json")
    assert response.status_code == 404
    assert "booking" in response.json()["detail"].lower()


@pytest.mark.parametrize(
    "body,field",
    [({"unexpected": 1}, "unexpected"), ([1, 2], "non_field_errors")],
    ids=["unknown-field", "list-body"],
)
def test_authorize_payment_refuses_any_body_field(clients, customer, provider, make_booking, body, field):
    booking = make_booking(customer, provider)
    response = clients["customer"].post(f"/api/bookings/{booking.uuid}/authorize-payment/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not booking.signatures.exists()


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": None}, "reason"),
        ({"reason": True}, "reason"),
        ({"reason": 5}, "reason"),
        ({"reason": ["a"]}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "a\x00b"}, "reason"),
        ({"reason": "ok", "split": {"customer": "1"}}, "split"),
    ],
    ids=["missing", "empty", "blank", "null", "bool", "number", "list", "too-long", "nul-char", "unknown-field"],
)
def test_request_cancellation_refuses_bad_input(clients, customer, provider, make_booking, body, field):
    booking = make_booking(customer, provider)
    transition(booking, BookingStatus.PAID, source=StatusSource.CHAIN)
    response = clients["customer"].post(f"/api/bookings/{booking.uuid}/request-cancellation/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "tx_hash"),
        ({"tx_hash": ""}, "tx_hash"),
        ({"tx_hash": "0x1234"}, "tx_hash"),
        ({"tx_hash": "ab" * 32}, "tx_hash"),
        ({"tx_hash": "0x" + "zz" * 32}, "tx_hash"),
        ({"tx_hash": "0x" + "ab" * 33}, "tx_hash"),
        ({"tx_hash": " 0x" + "ab" * 32}, "tx_hash"),
        ({"tx_hash": 12}, "tx_hash"),
        ({"tx_hash": None}, "tx_hash"),
        ({"tx_hash": "0x" + "ab" * 32, "booking": "x"}, "booking"),
    ],
    ids=[
        "missing", "empty", "short", "no-prefix", "not-hex", "too-long", "leading-space", "number", "null",
        "unknown-field",
    ],
)
def test_submit_transaction_refuses_bad_input_without_touching_the_chain(
    clients, customer, provider, make_booking, body, field
):
    # CHAIN_RPC_URLS points at a closed port in tests: reaching the RPC would be a 503, not a 400.
    booking = make_booking(customer, provider)
    response = clients["customer"].post(f"/api/bookings/{booking.uuid}/submit-transaction/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


# The schema says page is an integer from 1: DRF's own parsing also took "", "last" and whatever
# int() reads ("01", "+1", " 1").
@pytest.mark.parametrize(
    "page", ["abc", "0", "-1", "99999999999999999999999999", "1.5", "", "last", "01", "+1", " 1", ["1", "1"]]
)
def test_list_with_a_bad_page_is_json_404(clients, page):
    response = clients["customer"].get("/api/bookings/", {"page": page})
    assert response.status_code == 404
    assert "detail" in response.json()


def test_list_pages_are_numbered_from_1(clients, customer, provider, make_booking):
    make_booking(customer, provider)
    assert clients["customer"].get("/api/bookings/", {"page": "1"}).json()["count"] == 1


def test_list_ignores_unknown_query_parameters(clients):
    query = {"limit": "999999999999999999999", "offset": "-5"}
    assert clients["customer"].get("/api/bookings/", query).status_code == 200


def test_sign_in_nonce_refuses_body_fields(db):
    response = APIClient().post("/api/auth/nonce/", {"address": "0x1"}, format="json")
    assert response.status_code == 400
    assert "address" in response.json()
