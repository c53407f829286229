"""A cancellation reported through the fast path before the scanner stored its payment (issue 17,
defect 4), on a real anvil.

Mined in one block, the fast path fetches the payment's log of that block too and folds the normal
PENDING_PAYMENT → PAID → CANCELLED. Mined in an earlier block the scanner has not reached, the fast
path folds "cancellation without a known payment" (a CHAIN_ANOMALY item); once the scanner stores
the payment the item is withdrawn by the chain sync, needs_attention follows, and the trail shows
the payment as a history line that moves nothing (clients are not told of it).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from chain_events import scanner
from escrow import fastpath
from escrow.attention import CHAIN_SYNC
from escrow.models import AttentionKind, BookingStatus
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.chain_harness import booking_auth_tuple
from tests.escrow.helpers import wallet

pytestmark = [pytest.mark.django_db, pytest.mark.chain]
S = BookingStatus


def mine_in_one_block(chain, *functions_and_senders) -> list[str]:
    """Send the calls with automine off, mine them in one block, return their tx hashes."""
    chain.rpc("evm_setAutomine", [False])
    try:
        # Explicit gas: estimating against the latest block would revert the cancel (not paid yet).
        hashes = [fn.transact({"from": sender, "gas": 600_000}) for fn, sender in functions_and_senders]
        chain.mine()
    finally:
        chain.rpc("evm_setAutomine", [True])
    receipts = [chain.w3.eth.get_transaction_receipt(h) for h in hashes]
    assert [r["status"] for r in receipts] == [1] * len(receipts)
    assert len({r["blockNumber"] for r in receipts}) == 1
    return [h.to_0x_hex() for h in hashes]


def _booking_and_calls(chain, label: str):
    customer = chain.accounts.customers[2]
    booking = create_booking(
        customer=customer.address, provider=wallet(f"{label}-provider").address, amount="42.00",
        scheduled_at=timezone.now() + timedelta(days=2), description=label,
    )
    auth = sign_payment_authorization(booking)
    escrow = chain.escrow_contract.functions
    signature = bytes.fromhex(auth.signature.removeprefix("0x"))
    booking_id = bytes.fromhex(booking.chain_booking_id.removeprefix("0x"))
    pay = (escrow.createAndPayBooking(booking_auth_tuple(auth.message), signature), customer.address)
    cancel = (escrow.emergencyCancelBooking(booking_id, label), chain.accounts.operator.address)
    return booking, pay, cancel


def test_the_fast_path_folds_the_payment_mined_in_the_same_block_before_the_cancellation(chain_settings):
    booking, pay, cancel = _booking_and_calls(chain_settings, "same-block")
    pay_hash, cancel_hash = mine_in_one_block(chain_settings, pay, cancel)
    chain_settings.mine(settings.CHAIN_CONFIRMATIONS)

    outcome = fastpath.process_transaction(cancel_hash)

    assert outcome.inserted == 2
    booking.refresh_from_db()
    assert booking.status == S.CANCELLED and not booking.needs_attention and not booking.attention_items.exists()
    assert list(booking.status_changes.values_list("from_status", "to_status", "tx_hash")) == [
        ("", S.PENDING_PAYMENT, ""), (S.PENDING_PAYMENT, S.PAID, pay_hash), (S.PAID, S.CANCELLED, cancel_hash)]
    assert not scanner.scan_chain().errors
    assert booking.status_changes.count() == 3


def test_the_scanner_storing_the_payment_withdraws_the_fast_paths_anomaly_and_shows_the_payment(chain_settings):
    booking, (pay_fn, payer), (cancel_fn, canceller) = _booking_and_calls(chain_settings, "earlier-block")
    pay_hash = pay_fn.transact({"from": payer}).to_0x_hex()
    cancel_hash = cancel_fn.transact({"from": canceller}).to_0x_hex()
    chain_settings.mine(settings.CHAIN_CONFIRMATIONS)

    outcome = fastpath.process_transaction(cancel_hash)
    assert outcome.inserted == 1 and outcome.bookings_applied == 1
    booking.refresh_from_db()
    assert booking.status == S.CANCELLED and booking.needs_attention  # folded without the payment
    (item,) = booking.attention_items.all()
    assert item.kind == AttentionKind.CHAIN_ANOMALY and "without a known payment" in item.reason

    report = scanner.scan_chain()
    assert not report.errors, report.errors

    booking.refresh_from_db()
    assert booking.status == S.CANCELLED and not booking.needs_attention
    assert booking.payment_tx_hash == pay_hash and booking.cancellation_tx_hash == cancel_hash
    assert "anomalies" not in booking.chain_data
    item.refresh_from_db()
    block = chain_settings.w3.eth.get_transaction_receipt(cancel_hash)["blockNumber"]
    assert (item.is_open, item.acknowledged_by, item.acknowledged_why) == (
        False, CHAIN_SYNC, f"no longer raised by the chain events at block {block}")
    trail = list(booking.status_changes.values_list("from_status", "to_status", "tx_hash"))
    assert (S.PENDING_PAYMENT, S.PAID, pay_hash) in trail
    assert trail[-1][:2] == (S.PENDING_PAYMENT, S.PAID)
    paid = booking.status_changes.get(to_status=S.PAID)
    assert "recorded late" in paid.note and cancel_hash in paid.note
    # History, not a move: clients are not told the cancelled booking became PAID (no notification).
    assert not paid.moves_booking and not hasattr(paid, "notification")

    # A later pass over the same events changes nothing and raises nothing again.
    before = list(booking.status_changes.values_list("id", flat=True))
    assert fastpath.process_transaction(pay_hash).inserted == 0
    booking.refresh_from_db()
    assert not booking.needs_attention and not booking.attention_items.filter(acknowledged_at=None).exists()
    assert list(booking.status_changes.values_list("id", flat=True)) == before
