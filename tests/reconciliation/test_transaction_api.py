"""`GET /api/transactions/{hash}/` on a real anvil (issue 16, item 4): what the backend knows of a
transaction, the database first, and only to the wallets whose bookings it touches."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from chain_events import scanner
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.chain_harness import booking_auth_tuple
from tests.escrow.helpers import wallet, wallet_client

pytestmark = [pytest.mark.django_db, pytest.mark.chain]


@pytest.fixture
def parties(chain_settings, django_user_model):
    customer, provider = chain_settings.accounts.customers[4], wallet("lookup-provider")
    staff = APIClient()
    staff.force_login(django_user_model.objects.create_user("lookup-staff", password="x", is_staff=True))
    return {
        "customer": wallet_client(customer), "provider": wallet_client(provider),
        "stranger": wallet_client(wallet("lookup-stranger")), "staff": staff, "anonymous": APIClient(),
        "customer_account": customer, "provider_address": provider.address,
    }


@pytest.fixture
def booking(parties):
    return create_booking(
        customer=parties["customer_account"].address, provider=parties["provider_address"], amount="10.00",
        scheduled_at=timezone.now() + timedelta(days=2), description="lookup",
    )


def send_payment(chain, auth, customer) -> str:
    call = chain.escrow_contract.functions.createAndPayBooking(booking_auth_tuple(auth.message), auth.signature)
    return call.transact({"from": customer.address, "gas": 400_000}).to_0x_hex()


def lookup(client, tx_hash):
    return client.get(f"/api/transactions/{tx_hash}/")


def test_a_mined_payment_is_answered_from_the_database_to_its_parties_only(chain_settings, parties, booking):
    tx_hash = send_payment(chain_settings, sign_payment_authorization(booking), parties["customer_account"])
    chain_settings.mine(2)
    assert not scanner.scan_chain().errors

    for who in ("customer", "provider", "staff"):
        response = lookup(parties[who], tx_hash)
        assert response.status_code == 200, (who, response.content)
        body = response.json()
        assert (body["status"], body["applied"], body["answered_from"]) == ("mined", True, "database")
        assert body["block_number"] == chain_settings.w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]
        assert body["confirmations"] == 3  # its block and the two mined after it
        assert body["bookings"] == [{"booking": str(booking.uuid), "status": "PAID",
                                     "events": ["BookingCreatedAndPaid"]}]
        assert body["reason"] is None and body["retry_after_seconds"] is None
    assert lookup(parties["stranger"], tx_hash).status_code == 404
    assert lookup(parties["anonymous"], tx_hash).status_code == 401
    assert parties["customer"].get(f"/api/transactions/{tx_hash}").status_code == 200  # no slash
    bad = lookup(parties["customer"], "0x1234")
    assert bad.status_code == 400 and "tx_hash" in bad.json()


def test_a_reverted_payment_is_explained_from_the_node(chain_settings, parties, booking):
    # Expired a minute before the chain's clock (anvil's may be offset from ours).
    signed_at = chain_settings.latest_timestamp() - settings.AUTHORIZATION_TTL_SECONDS - 60
    expired = sign_payment_authorization(booking, now=datetime.fromtimestamp(signed_at, UTC))
    tx_hash = send_payment(chain_settings, expired, parties["customer_account"])

    body = lookup(parties["customer"], tx_hash).json()
    assert (body["status"], body["answered_from"], body["applied"]) == ("reverted", "node", False)
    assert body["reason"]["error"] == "AuthorizationExpired"
    assert body["reason"]["args"] == {"expiry": str(expired.message["expiry"])}
    assert body["bookings"] == [{"booking": str(booking.uuid), "status": "PENDING_PAYMENT", "events": []}]
    assert body["confirmations"] == 1
    assert lookup(parties["provider"], tx_hash).status_code == 200  # the call names its booking
    assert lookup(parties["stranger"], tx_hash).status_code == 404


def test_unknown_and_pending_hashes_answer_202_with_retry_after(chain_settings, parties, booking):
    unknown = lookup(parties["stranger"], "0x" + "ef" * 32)
    assert unknown.status_code == 202
    assert unknown["Retry-After"] == str(settings.TX_CLIENT_POLL_SECONDS)
    assert (unknown.json()["status"], unknown.json()["bookings"]) == ("unknown", [])

    chain = chain_settings
    chain.rpc("evm_setAutomine", [False])
    try:
        tx_hash = send_payment(chain, sign_payment_authorization(booking), parties["customer_account"])
        pending = lookup(parties["customer"], tx_hash)
        stranger = lookup(parties["stranger"], tx_hash)
    finally:
        chain.rpc("evm_setAutomine", [True])
        chain.mine()
    assert pending.status_code == 202, pending.content
    body = pending.json()
    assert (body["status"], body["block_number"], body["confirmations"]) == ("pending", None, None)
    assert body["bookings"] == [{"booking": str(booking.uuid), "status": "PENDING_PAYMENT", "events": []}]
    assert body["retry_after_seconds"] == settings.TX_CLIENT_POLL_SECONDS
    assert stranger.status_code == 404


def test_lookups_are_throttled_per_wallet(settings, chain_settings, parties):
    settings.TRANSACTION_LOOKUP_THROTTLE_RATE = "2/minute"
    answers = [lookup(parties["stranger"], "0x" + "ef" * 32).status_code for _ in range(3)]
    assert answers == [202, 202, 429]
    assert lookup(parties["customer"], "0x" + "ef" * 32).status_code == 202  # another wallet, its own budget
