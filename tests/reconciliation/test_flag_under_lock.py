"""Reconciliation flags only what still disagrees with the chain when the booking is read under its
row lock, and withdraws a flag whose difference is gone (issue 17, defect 2), on a real anvil."""
from __future__ import annotations

import pytest

from escrow.models import Booking, BookingStatus, StatusSource
from escrow.state import transition
from reconciliation import reconcile
from reconciliation.models import FlagKind, ReconciliationFlag
from reconciliation.reconcile import SYSTEM_ACTOR, reconcile_bookings

pytestmark = [pytest.mark.django_db, pytest.mark.chain]
S = BookingStatus


def test_a_stale_read_of_the_database_raises_no_flag_and_a_real_difference_still_does(monkeypatch, make_booking):
    """The run reads PAID for two bookings the chain has never seen; before the flag step another
    writer (the scanner's reorg rollback) brings one back to PENDING_PAYMENT. Only the other is flagged."""
    rolled_back, wrong = make_booking(), make_booking()
    for booking in (rolled_back, wrong):
        transition(booking, S.PAID, source=StatusSource.ADMIN, actor="test", note="database-only change")
    real_read = reconcile.read_chain_bookings

    def read_then_the_rollback_commits(ids, *, block="latest", client=None):
        if block == "latest":  # the run's database read is done: the rollback lands now
            Booking.objects.filter(pk=rolled_back.pk).update(status=S.PENDING_PAYMENT)
        return real_read(ids, block=block, client=client)

    monkeypatch.setattr(reconcile, "read_chain_bookings", read_then_the_rollback_commits)
    report = reconcile_bookings(trigger="test")

    assert (report.checked, report.in_agreement, report.flagged) == (2, 1, 1)
    assert not ReconciliationFlag.objects.filter(booking=rolled_back).exists()
    rolled_back.refresh_from_db()
    assert not rolled_back.needs_attention
    flag = ReconciliationFlag.objects.get(booking=wrong)
    assert (flag.kind, flag.database_status, flag.chain_status) == (FlagKind.DATABASE_AHEAD, S.PAID, "NONE")
    assert flag.detail.startswith(f"database says PAID but the chain shows NONE at block {report.chain_block}")


def test_a_flag_no_longer_true_is_withdrawn_by_the_next_run(make_booking):
    booking = make_booking()
    transition(booking, S.PAID, source=StatusSource.ADMIN, actor="test", note="database-only change")
    reconcile_bookings(trigger="test")
    flag = ReconciliationFlag.objects.get(booking=booking, resolved_at=None)
    booking.refresh_from_db()
    assert booking.needs_attention

    # The chain sync re-derives the booking (what a false flag looked like in the chaos run).
    Booking.objects.filter(pk=booking.pk).update(status=S.PENDING_PAYMENT)
    report = reconcile_bookings(trigger="test")

    assert (report.in_agreement, report.flagged) == (1, 0)
    flag.refresh_from_db()
    assert flag.resolved_at is not None and flag.resolved_by == SYSTEM_ACTOR
    assert flag.resolution_note == f"withdrawn: database (PENDING_PAYMENT) and chain (NONE) agree at block " \
                                   f"{report.chain_block}"
    booking.refresh_from_db()
    assert not booking.needs_attention
    (item,) = booking.attention_items.all()
    assert not item.is_open and item.acknowledged_by == SYSTEM_ACTOR


@pytest.mark.django_db(transaction=True)
def test_a_reorg_the_chain_sync_has_not_rolled_back_yet_raises_no_flag(chain_settings, make_booking, pay, customer):
    """Found by the chaos run: a run just after a reorg, before the scanner saw it, flagged 72
    bookings whose completion the reorg had taken (database COMPLETED, chain PAID); the scanner
    rolled them back and the next run withdrew every flag, 20 s later. A booking with an event in a
    block the chain has since replaced (or above the scanner's cursor) is the chain sync's to
    settle, not staff's: no flag. Once it has, database and chain agree."""
    from tests.reconciliation.conftest import scan_to_head

    chain = chain_settings
    booking = make_booking()
    pay(booking)
    scan_to_head(chain)
    booking.refresh_from_db()
    chain.complete_service(booking.chain_booking_id, customer.address)
    scan_to_head(chain)
    booking.refresh_from_db()
    assert booking.status == S.COMPLETED
    chain.rpc("anvil_reorg", [1, []])  # the completion's block is replaced: the chain shows PAID

    report = reconcile_bookings(trigger="test")

    assert report.flagged == 0 and not ReconciliationFlag.objects.exists()
    booking.refresh_from_db()
    assert not booking.needs_attention
    scan_to_head(chain)  # the chain sync rolls the completion back
    booking.refresh_from_db()
    assert booking.status == S.PAID
    assert reconcile_bookings(trigger="test").in_agreement == 1
