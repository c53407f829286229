"""What `submit-transaction` answers about a transaction that is not simply mined (issue 16, items 4 and 5):
a reverted one with the contract's decoded custom error (also put on the booking's history), and a
hash the node has never seen (`unknown`) told apart from one in its mempool (`pending`). Real anvil.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from chain_events.models import ChainEvent
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.chain_harness import booking_auth_tuple
from tests.escrow.helpers import wallet, wallet_client

pytestmark = [pytest.mark.django_db, pytest.mark.chain]


@pytest.fixture
def customer(chain_settings):
    return chain_settings.accounts.customers[0]


@pytest.fixture
def booking(customer):
    return create_booking(
        customer=customer.address, provider=wallet("answers-provider").address, amount="25.00",
        scheduled_at=timezone.now() + timedelta(days=2), description="answers",
    )


@pytest.fixture
def client(customer):
    return wallet_client(customer)


def submit(client, booking, tx_hash: str):
    return client.post(f"/api/bookings/{booking.uuid}/submit-transaction/", {"tx_hash": tx_hash}, format="json")


def send_payment(chain, auth, customer) -> str:
    """createAndPayBooking with a fixed gas limit (no estimate: it is sent even if it will revert)."""
    call = chain.escrow_contract.functions.createAndPayBooking(booking_auth_tuple(auth.message), auth.signature)
    return call.transact({"from": customer.address, "gas": 400_000}).to_0x_hex()


def expired_on_chain(chain) -> datetime:
    """A signing time whose authorization expired a minute before the chain's clock (anvil's clock
    may be offset from ours: tests move it, and evm_revert keeps the offset)."""
    return datetime.fromtimestamp(chain.latest_timestamp() - settings.AUTHORIZATION_TTL_SECONDS - 60, UTC)


def reverted_history(booking):
    return list(
        booking.status_changes.filter(note__startswith="transaction reverted")
        .values_list("from_status", "to_status", "source", "tx_hash", "note")
    )


def test_a_payment_with_an_expired_authorization_answers_and_records_AuthorizationExpired(
    chain_settings, booking, customer, client
):
    auth = sign_payment_authorization(booking, now=expired_on_chain(chain_settings))
    tx_hash = send_payment(chain_settings, auth, customer)
    assert chain_settings.w3.eth.get_transaction_receipt(tx_hash)["status"] == 0

    response = submit(client, booking, tx_hash)

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["booking_status"]) == ("reverted", "PENDING_PAYMENT")
    expiry = str(auth.message["expiry"])
    assert body["reason"]["error"] == "AuthorizationExpired"
    assert body["reason"]["args"] == {"expiry": expiry}
    assert body["reason"]["function"] == "createAndPayBooking"
    assert body["reason"]["data"].startswith("0x")
    note = f"transaction reverted: AuthorizationExpired(expiry={expiry})"
    assert reverted_history(booking) == [("PENDING_PAYMENT", "PENDING_PAYMENT", "chain", tx_hash, note)]
    # The booking's own answer shows it in its history; reporting it again adds nothing.
    shown = client.get(f"/api/bookings/{booking.uuid}/").json()
    assert shown["status"] == "PENDING_PAYMENT"
    assert shown["status_history"][-1]["note"] == note
    assert submit(client, booking, tx_hash).json()["reason"]["error"] == "AuthorizationExpired"
    assert len(reverted_history(booking)) == 1
    assert not ChainEvent.objects.exists()


def test_a_replayed_payment_answers_NonceAlreadyUsed_and_the_booking_stays_paid(
    chain_settings, booking, customer, client
):
    auth = sign_payment_authorization(booking)
    paid = send_payment(chain_settings, auth, customer)
    assert submit(client, booking, paid).json()["booking_status"] == "PAID"
    replayed = send_payment(chain_settings, auth, customer)  # the same authorization again
    assert chain_settings.w3.eth.get_transaction_receipt(replayed)["status"] == 0

    response = submit(client, booking, replayed)

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["booking_status"]) == ("reverted", "PAID")
    nonce = str(auth.message["nonce"])
    assert (body["reason"]["error"], body["reason"]["args"]) == ("NonceAlreadyUsed", {"nonce": nonce})
    assert reverted_history(booking) == [
        ("PAID", "PAID", "chain", replayed, f"transaction reverted: NonceAlreadyUsed(nonce={nonce})")
    ]


def test_a_reverted_call_for_another_booking_is_refused_on_tx_hash(chain_settings, booking, customer, client):
    other = create_booking(
        customer=customer.address, provider=wallet("answers-provider").address, amount="5.00",
        scheduled_at=timezone.now() + timedelta(days=2), description="other",
    )
    expired = sign_payment_authorization(other, now=expired_on_chain(chain_settings))
    tx_hash = send_payment(chain_settings, expired, customer)
    response = submit(client, booking, tx_hash)
    assert response.status_code == 400, response.content
    assert "another booking" in response.json()["tx_hash"][0]
    assert not reverted_history(booking) and not reverted_history(other)


def test_a_hash_the_node_never_saw_is_unknown_and_one_in_its_mempool_is_pending(
    chain_settings, booking, customer, client
):
    chain = chain_settings
    unknown = submit(client, booking, "0x" + "cd" * 32)
    assert unknown.status_code == 202, unknown.content
    assert unknown["Retry-After"] == str(settings.TX_CLIENT_POLL_SECONDS)
    body = unknown.json()
    assert (body["status"], body["retry_after_seconds"]) == ("unknown", settings.TX_CLIENT_POLL_SECONDS)
    assert "send it again" in body["hint"]

    chain.rpc("evm_setAutomine", [False])
    try:
        tx_hash = send_payment(chain, sign_payment_authorization(booking), customer)  # waits in the mempool
        pending = submit(client, booking, tx_hash)
    finally:
        chain.rpc("evm_setAutomine", [True])
    assert pending.status_code == 202, pending.content
    assert pending["Retry-After"] == str(settings.TX_CLIENT_POLL_SECONDS)
    body = pending.json()
    assert (body["status"], body["block_number"], body["booking_status"]) == ("pending", None, "PENDING_PAYMENT")
    assert body["retry_after_seconds"] == settings.TX_CLIENT_POLL_SECONDS

    chain.mine()
    mined = submit(client, booking, tx_hash)
    assert mined.status_code == 200, mined.content
    assert (mined.json()["status"], mined.json()["booking_status"]) == ("mined", "PAID")
    assert mined.json()["retry_after_seconds"] is None
