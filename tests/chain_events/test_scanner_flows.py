"""Scanner end to end on real anvil + PostgreSQL: payment, completion, cancellation,
exactly-once under rescans, orphans, replay."""
from __future__ import annotations

import pytest
from django.core.management import call_command

from chain_events import ingest
from chain_events.cursor import rewind_cursor
from chain_events.models import ChainEvent, EventStatus, Orphan, SyncCursor
from escrow.chain_consumer import BookingConsumer
from escrow.models import (
    Booking,
    BookingStatus,
    BookingStatusChange,
    PlatformFee,
    ProviderEarnings,
    SignatureNonce,
    StatusSource,
)
from escrow.signing import sign_payment_authorization

from .conftest import scan

pytestmark = [pytest.mark.chain, pytest.mark.django_db]


def tx(receipt) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def test_pay_then_complete_ends_completed_with_fee_and_earnings(flow):
    booking, pay_receipt = flow.paid_booking(amount=250 * 10**6)
    report = scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID
    assert booking.payment_tx_hash == tx(pay_receipt)
    assert report.logs == 1 and report.inserted == 1 and report.bookings == 1
    nonce = SignatureNonce.objects.get(booking=booking, kind="payment")
    assert nonce.consumed_tx_hash == tx(pay_receipt)

    done_receipt = flow.complete(booking)
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.COMPLETED
    assert booking.completion_tx_hash == tx(done_receipt)
    fee = PlatformFee.objects.get(booking=booking)
    assert (fee.platform_amount, fee.inviter_amount, fee.provider_amount) == (25 * 10**6, 0, 225 * 10**6)
    assert fee.tx_hash == tx(done_receipt)
    earnings = ProviderEarnings.objects.get(provider_address=booking.provider_address)
    assert (earnings.total_earned, earnings.services_completed) == (225 * 10**6, 1)
    chain_changes = list(booking.status_changes.filter(source="chain").values_list("to_status", "tx_hash"))
    assert chain_changes == [(BookingStatus.PAID, tx(pay_receipt)), (BookingStatus.COMPLETED, tx(done_receipt))]
    assert ChainEvent.objects.filter(status=EventStatus.PROCESSED).count() == 2
    cursor = SyncCursor.objects.get()
    assert cursor.last_block == flow.chain.block_number()
    assert cursor.last_block_hash == flow.chain.w3.eth.get_block("latest")["hash"].to_0x_hex()


def test_pay_and_complete_in_one_scan_walks_both_steps(flow):
    booking, _ = flow.paid_booking(inviter=provider_address_inviter())
    flow.complete(booking)
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.COMPLETED
    assert list(booking.status_changes.filter(source="chain").values_list("from_status", "to_status")) == [
        (BookingStatus.PENDING_PAYMENT, BookingStatus.PAID), (BookingStatus.PAID, BookingStatus.COMPLETED),
    ]
    fee = PlatformFee.objects.get(booking=booking)
    # 500 + 500 bps with an inviter: parts sum to the amount.
    assert (fee.platform_amount, fee.inviter_amount, fee.provider_amount) == (5 * 10**6, 5 * 10**6, 90 * 10**6)


def provider_address_inviter() -> str:
    from .conftest import provider_address

    return provider_address("inviter")


def test_pay_then_cancel_ends_cancelled_with_split_recorded(flow):
    booking, _ = flow.paid_booking()
    scan()
    cancel_receipt = flow.cancel(booking)
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.CANCELLED
    assert booking.cancellation_tx_hash == tx(cancel_receipt)
    split = booking.chain_data["cancellation"]
    parts = [int(split[k]) for k in ("customerAmount", "providerAmount", "platformAmount", "inviterAmount")]
    assert sum(parts) == booking.amount
    fee = PlatformFee.objects.filter(booking=booking).first()
    if parts[2] + parts[3]:
        assert (fee.platform_amount, fee.inviter_amount, fee.provider_amount) == (parts[2], parts[3], parts[1])
    else:
        assert fee is None
    assert not ProviderEarnings.objects.filter(provider_address=booking.provider_address).exists()
    assert SignatureNonce.objects.get(booking=booking, kind="cancellation").consumed_tx_hash == tx(cancel_receipt)
    assert booking.status_changes.filter(source="chain", to_status=BookingStatus.CANCELLED).count() == 1


def test_same_range_scanned_twice_applies_once(flow):
    bookings = [flow.paid_booking(customer=i % 3)[0] for i in range(4)]
    flow.complete(bookings[0])
    scan()
    # Rewind and rescan the same blocks, then replay them too: nothing changes.
    rewind_cursor(flow.chain.start_block, reason="test")
    second = scan()
    assert second.logs == 5 and second.inserted == 0 and second.bookings == 0
    call_command("replay_events", "--from-block", str(flow.chain.start_block))
    assert ChainEvent.objects.count() == 5
    assert BookingStatusChange.objects.filter(source="chain").count() == 5  # 4 PAID + 1 COMPLETED
    assert PlatformFee.objects.count() == 1
    earnings = ProviderEarnings.objects.get()
    assert earnings.services_completed == 1 and earnings.total_earned == 90 * 10**6
    assert set(Booking.objects.values_list("status", flat=True)) == {BookingStatus.PAID, BookingStatus.COMPLETED}


def test_payment_mismatch_is_flagged_not_hidden(flow):
    booking = flow.booking(amount=100 * 10**6)
    auth = sign_payment_authorization(booking)
    flow.chain.pay_booking(auth.message, auth.signature, booking.customer_address)
    # The database's booking changed after signing (a bug or tampering): the chain still wins.
    Booking.objects.filter(pk=booking.pk).update(amount=99 * 10**6)
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID
    assert booking.needs_attention
    (item,) = booking.attention_items.all()
    assert item.kind == "CHAIN_MISMATCH" and item.is_open
    assert "amount chain=100000000 db=99000000" in item.reason


def test_a_payment_mismatch_acknowledged_by_staff_goes_back_to_auto_complete_and_is_not_raised_again(flow):
    """A flagged booking is kept out of auto-complete; without a way to accept the chain's
    payment it could only be refunded."""
    from datetime import timedelta

    from django.utils import timezone

    from reconciliation.operations import acknowledge_attention, auto_complete_candidates

    booking = flow.booking(amount=100 * 10**6)
    auth = sign_payment_authorization(booking)
    flow.chain.pay_booking(auth.message, auth.signature, booking.customer_address)
    Booking.objects.filter(pk=booking.pk).update(amount=99 * 10**6)
    scan()
    after_service = timezone.now() + timedelta(days=30)
    assert booking not in auto_complete_candidates(after_service)
    booking = acknowledge_attention(booking, actor="staff:alice", reason="the customer paid the old price; agreed")
    assert not booking.needs_attention
    assert booking in auto_complete_candidates(after_service)
    # The chain sync applying the same payment again (replay) does not raise it again.
    call_command("replay_events", "--from-block", str(flow.chain.start_block))
    booking.refresh_from_db()
    (item,) = booking.attention_items.all()
    assert not booking.needs_attention and not item.is_open and item.acknowledged_by == "staff:alice"


def test_unknown_booking_id_becomes_an_orphan(flow):
    booking, receipt = flow.paid_booking(amount=42 * 10**6)
    chain_booking_id = booking.chain_booking_id
    # The database lost the booking (e.g. a restore from an older backup).
    SignatureNonce.objects.filter(booking=booking).delete()
    booking.status_changes.all().delete()
    booking.delete()
    report = scan()
    assert report.orphans == 1
    orphan = Orphan.objects.get(chain_booking_id=chain_booking_id)
    assert orphan.status == "OPEN" and orphan.chain_status == "PAID"
    assert orphan.amount == 42 * 10**6 and orphan.tx_hash == tx(receipt)
    assert orphan.customer_address == flow.customer(0)
    assert ChainEvent.objects.get(chain_booking_id=chain_booking_id).status == EventStatus.PROCESSED


def test_scan_chain_command_once(flow):
    booking, _ = flow.paid_booking()
    call_command("scan_chain", "--once")
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID


def test_apply_logs_records_reconciliation_as_source(flow):
    booking, receipt = flow.paid_booking()
    raw = flow.chain.rpc("eth_getLogs", [{
        "fromBlock": hex(receipt["blockNumber"]), "toBlock": hex(receipt["blockNumber"]),
        "address": flow.chain.escrow, "topics": [None, booking.chain_booking_id],
    }])
    reconciliation = BookingConsumer(status_source=StatusSource.RECONCILIATION)
    outcome = ingest.apply_logs(raw, consumer=reconciliation, actor="reconciliation run 7")
    assert outcome.inserted == 1 and outcome.bookings == 1
    change = booking.status_changes.get(to_status=BookingStatus.PAID)
    assert (change.source, change.actor) == ("reconciliation", "reconciliation run 7")
    assert ChainEvent.objects.get().source == "reconciliation"
    again = ingest.apply_logs(raw, consumer=reconciliation, actor="reconciliation run 8")
    assert again.inserted == 0
    assert booking.status_changes.filter(to_status=BookingStatus.PAID).count() == 1
    scan()  # the scanner meeting the same log later changes nothing
    assert booking.status_changes.filter(to_status=BookingStatus.PAID).count() == 1
