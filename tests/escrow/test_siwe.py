"""Sign-In with Ethereum through the API: nonce, EIP-4361 message checks, single-use nonces, a
token bound to the wallet. Every refusal is a 400 whose JSON names the field and the reason."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from escrow.models import WalletToken

from .helpers import personal_sign, sign_in, siwe_message, wallet

pytestmark = pytest.mark.django_db


def _nonce(client: APIClient) -> str:
    response = client.post("/api/auth/nonce/", format="json")
    assert response.status_code == 201, response.content
    return response.json()["nonce"]


def _verify(client: APIClient, message: str, signature: str):
    return client.post("/api/auth/verify/", {"message": message, "signature": signature}, format="json")


def test_nonce_endpoint_says_what_to_sign(settings):
    body = APIClient().post("/api/auth/nonce/", format="json").json()
    assert len(body["nonce"]) == 32 and body["nonce"].isalnum()
    assert body == {"nonce": body["nonce"], "expires_in": settings.SIWE_NONCE_TTL_SECONDS,
                    "domains": settings.SIWE_DOMAIN, "chain_id": settings.CHAIN_ID}
    assert APIClient().post("/api/auth/nonce/", format="json").json()["nonce"] != body["nonce"]


def test_sign_in_issues_a_token_bound_to_the_wallet(customer):
    client = sign_in(customer)
    response = client.get("/api/auth/me/")
    assert response.status_code == 200
    assert response.json()["address"] == customer.address
    record = WalletToken.objects.get()
    assert record.address == customer.address and len(record.token_hash) == 64  # only the hash is stored


def test_the_token_lives_no_longer_than_the_messages_expiration_time(customer, settings):
    client = APIClient()
    soon = timezone.now() + timedelta(minutes=1)
    message = siwe_message(customer.address, _nonce(client), expiration_time=soon)
    response = _verify(client, message, personal_sign(customer, message))
    assert response.status_code == 200, response.content
    record = WalletToken.objects.get()
    assert abs((record.expires_at - soon).total_seconds()) < 1  # not the 24 h default
    # Without an Expiration Time the setting decides.
    message = siwe_message(customer.address, _nonce(client))
    assert _verify(client, message, personal_sign(customer, message)).status_code == 200
    latest = WalletToken.objects.latest("id")
    assert latest.expires_at - latest.created_at > timedelta(seconds=settings.WALLET_TOKEN_TTL_SECONDS - 5)


def test_a_lower_case_message_address_is_refused(customer):
    client = APIClient()
    message = siwe_message(customer.address.lower(), _nonce(client))
    response = _verify(client, message, personal_sign(customer, message))
    assert response.status_code == 400
    assert "checksummed" in response.json()["message"][0]


def _expired(_):
    now = timezone.now()
    return {"issued_at": now - timedelta(minutes=2), "expiration_time": now - timedelta(minutes=1)}


# (case, message overrides, reason fragment) — all refused with {"message": [reason]}
MESSAGE_CASES = [
    ("wrong-domain", lambda c: {"domain": "evil.example"}, "is not this service"),
    ("uri-on-another-host", lambda c: {"uri": "https://evil.example/login"}, "URI must be"),
    ("uri-unbalanced-bracket", lambda c: {"uri": "http://[localhost:8000/"}, "not a valid URI"),
    ("uri-stray-bracket", lambda c: {"uri": "http://localhost:8000]/"}, "not a valid URI"),
    ("wrong-chain-id", lambda c: {"chain_id": 1}, "Chain ID must be 31337"),
    ("expired-message", _expired, "expired"),
    ("issued-long-ago", lambda c: {"issued_at": timezone.now() - timedelta(hours=2)}, "too old"),
    ("issued-in-the-future", lambda c: {"issued_at": timezone.now() + timedelta(hours=1)}, "in the future"),
]


@pytest.mark.parametrize("case,overrides,reason", MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
def test_message_terms_are_checked(customer, case, overrides, reason):
    client = APIClient()
    nonce = _nonce(client)
    message = siwe_message(customer.address, nonce, **overrides(customer))
    response = _verify(client, message, personal_sign(customer, message))
    assert response.status_code == 400, response.content
    assert reason in response.json()["message"][0]
    assert not WalletToken.objects.exists()
    # A refused request does not burn the nonce: the correct message still signs in with it.
    good = siwe_message(customer.address, nonce)
    assert _verify(client, good, personal_sign(customer, good)).status_code == 200


def test_a_nonce_is_single_use(customer):
    client = APIClient()
    message = siwe_message(customer.address, _nonce(client))
    signature = personal_sign(customer, message)
    assert _verify(client, message, signature).status_code == 200
    replay = _verify(APIClient(), message, signature)
    assert replay.status_code == 400
    assert "already used" in replay.json()["message"][0]
    assert WalletToken.objects.count() == 1


def test_a_nonce_the_server_never_issued_is_refused(customer):
    message = siwe_message(customer.address, "a1b2c3d4e5f6a7b8")
    response = _verify(APIClient(), message, personal_sign(customer, message))
    assert response.status_code == 400
    assert "Nonce is unknown" in response.json()["message"][0]


@pytest.mark.parametrize(
    "signature,reason",
    [
        ("0x1234", "65-byte signature"),
        ("0x" + "zz" * 65, "65-byte signature"),
        ("0x" + "00" * 65, "not a valid secp256k1 signature"),
        ("0x" + "ff" * 64 + "1b", "not a valid secp256k1 signature"),
    ],
    ids=["short", "not-hex", "all-zero", "s-out-of-range"],
)
@pytest.mark.chain
def test_malformed_signatures_are_refused(customer, signature, reason, chain_settings):
    """A signature ecrecover cannot use is refused with its own reason once the chain shows the
    address has no code (a contract wallet's signature need not be 65 bytes)."""
    client = APIClient()
    message = siwe_message(customer.address, _nonce(client))
    response = _verify(client, message, signature)
    assert response.status_code == 400
    assert reason in response.json()["signature"][0]


@pytest.mark.chain
def test_a_signature_by_another_wallet_is_refused(customer, stranger, chain_settings):
    client = APIClient()
    message = siwe_message(customer.address, _nonce(client))
    response = _verify(client, message, personal_sign(stranger, message))
    assert response.status_code == 400
    assert response.json() == {"signature": ["was not made by the message's address"]}


@pytest.mark.chain
def test_a_signature_over_different_text_is_refused(customer, chain_settings):
    """The signature covers the exact text: a message altered after signing fails."""
    client = APIClient()
    nonce = _nonce(client)
    signed_text = siwe_message(customer.address, nonce, statement="Sign in to BookMe.")
    altered = siwe_message(customer.address, nonce, statement="Sign in to BookMe and pay.")
    response = _verify(client, altered, personal_sign(customer, signed_text))
    assert response.status_code == 400 and "signature" in response.json()


@pytest.mark.parametrize(
    "body,field",
    [
        ({"signature": "0x" + "00" * 65}, "message"),
        ({"message": "hello"}, "signature"),
        ({"message": "x", "signature": "0x", "address": "0x"}, "address"),
        ({"message": ["not", "text"], "signature": "0x"}, "message"),
    ],
    ids=["no-message", "no-signature", "unknown-field", "message-not-text"],
)
def test_bad_request_bodies_name_the_field(db, body, field):
    response = APIClient().post("/api/auth/verify/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_garbage_message_text_is_refused_naming_the_message():
    for text in ["hello", "x wants you to sign in with your Ethereum account:\n0x12", "\n" * 20]:
        response = _verify(APIClient(), text, "0x" + "11" * 65)
        assert response.status_code == 400 and "message" in response.json(), text


def test_the_token_only_acts_for_its_own_wallet(customer, provider, make_booking):
    booking = make_booking(customer, provider)
    outsider = sign_in(wallet("outsider"))
    assert outsider.get(f"/api/bookings/{booking.uuid}/").status_code == 404
    assert sign_in(customer).get(f"/api/bookings/{booking.uuid}/").status_code == 200
