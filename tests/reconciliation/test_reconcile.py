"""Reconciliation against a real anvil: missed payments repaired, database-only states flagged,
unused authorizations expired, and an RPC outage in the middle of a run leaves nothing half done."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.utils import timezone

from chain_events.models import ChainEvent
from escrow.models import BookingStatus, StatusSource
from escrow.services import request_cancellation
from escrow.signing import sign_payment_authorization
from escrow.state import transition
from reconciliation.chain_reads import read_chain_bookings
from reconciliation.models import FlagKind, ReconciliationFlag, ReconciliationReport, ReportStatus
from reconciliation.operations import ActionRefused, rebuild_booking_from_chain, resolve_flag
from reconciliation.reconcile import reconcile_booking, reconcile_bookings
from tests.rpc_proxy import RpcProxy

pytestmark = [pytest.mark.django_db, pytest.mark.chain]
S = BookingStatus


def force_status(booking, status):
    """A database that believes something the chain never saw (e.g. a bad manual edit)."""
    transition(booking, status, source=StatusSource.ADMIN, actor="test", note="database-only change")


def test_repairs_a_payment_the_scanner_never_saw_and_flags_a_database_only_paid(make_booking, pay):
    missed = make_booking()
    tx_hash = pay(missed)  # paid on chain; the scanner is not running
    database_only = make_booking()
    force_status(database_only, S.PAID)
    untouched = make_booking()

    report = reconcile_bookings(trigger="test")

    assert report.status == ReportStatus.OK
    assert (report.checked, report.in_agreement, report.repaired, report.flagged, report.errors) == (3, 1, 1, 1, 0)
    assert report.finished_at and report.duration_seconds > 0 and report.rpc_round_trips >= 3
    missed.refresh_from_db()
    assert missed.status == S.PAID and missed.payment_tx_hash == tx_hash
    change = missed.status_changes.get(to_status=S.PAID)
    assert change.tx_hash == tx_hash
    event = ChainEvent.objects.get(chain_booking_id=missed.chain_booking_id)
    assert (event.event_name, event.source, event.status) == ("BookingCreatedAndPaid", "reconciliation", "PROCESSED")
    database_only.refresh_from_db()
    assert database_only.status == S.PAID  # flagged for staff, never rewritten from a guess
    (item,) = database_only.attention_items.all()
    assert database_only.needs_attention and item.kind == "RECONCILIATION" and item.is_open
    flag = ReconciliationFlag.objects.get(booking=database_only)
    assert (flag.kind, flag.database_status, flag.chain_status, flag.report_id) == (
        FlagKind.DATABASE_AHEAD, S.PAID, "NONE", report.pk)
    untouched.refresh_from_db()
    assert untouched.status == S.PENDING_PAYMENT and not untouched.needs_attention

    # A second run finds the repair in place and does not pile up flags.
    again = reconcile_bookings(trigger="test")
    assert (again.in_agreement, again.repaired, again.flagged) == (2, 0, 1)
    assert ReconciliationFlag.objects.filter(booking=database_only).count() == 1
    assert ChainEvent.objects.count() == 1

    # Staff resolve the flag; a later run flags the still-wrong booking again (a new flag).
    resolve_flag(flag, actor="staff:op", note="checked with the customer")
    database_only.refresh_from_db()
    item.refresh_from_db()
    assert not database_only.needs_attention and not item.is_open and item.acknowledged_by == "staff:op"
    reconcile_bookings(trigger="test")
    database_only.refresh_from_db()
    assert database_only.needs_attention
    assert ReconciliationFlag.objects.filter(booking=database_only, resolved_at__isnull=True).count() == 1


def test_unused_authorizations_expire_and_a_lapsed_cancellation_returns_to_paid(make_booking, pay):
    long_ago = timezone.now() - timedelta(hours=1)
    unpaid = make_booking()
    sign_payment_authorization(unpaid, now=long_ago)  # expired 55 minutes ago, never used
    paid = make_booking()
    pay(paid)
    first = reconcile_bookings(trigger="test")  # repairs the payment, expires the unused authorization
    assert (first.repaired, first.expired, first.cancellations_lapsed) == (1, 1, 0)
    unpaid.refresh_from_db()
    assert unpaid.status == S.EXPIRED
    paid.refresh_from_db()
    request_cancellation(paid, requested_by="customer", reason="changed plans", now=long_ago)
    paid.refresh_from_db()
    assert paid.status == S.PENDING_CANCELLATION

    report = reconcile_bookings(trigger="test")

    assert (report.expired, report.cancellations_lapsed, report.errors) == (0, 1, 0)
    paid.refresh_from_db()
    assert paid.status == S.PAID


def test_reconcile_one_booking_now(make_booking, pay):
    booking = make_booking()
    other = make_booking()
    pay(booking)
    pay(other)
    report = reconcile_booking(booking, actor="staff:op")
    assert (report.trigger, report.actor, report.checked, report.repaired) == ("admin", "staff:op", 1, 1)
    booking.refresh_from_db()
    other.refresh_from_db()
    assert booking.status == S.PAID and other.status == S.PENDING_PAYMENT


def test_rpc_down_mid_run_counts_errors_and_applies_nothing(chain_settings, settings, make_booking, pay):
    missed = make_booking()
    pay(missed)
    database_only = make_booking()
    force_status(database_only, S.PAID)
    settings.RPC_RETRIES = 0
    with RpcProxy(chain_settings.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.failing_methods = {"eth_getLogs"}  # state reads work, the log fetch fails
        report = reconcile_bookings(trigger="test")
        assert "eth_call" in proxy.seen and "eth_getLogs" in proxy.seen

        assert report.status == ReportStatus.FAILED
        assert report.errors == 2 and report.repaired == 0 and report.flagged == 0
        assert "RPC unavailable" in report.error_details[0]
        assert report.finished_at is not None
        missed.refresh_from_db()
        assert missed.status == S.PENDING_PAYMENT
        assert not ChainEvent.objects.exists() and not ReconciliationFlag.objects.exists()
        assert report.expired == 0

        # Down from the start: the run still leaves a report.
        proxy.failing_methods = {"eth_getBlockByNumber"}  # the head is read first
        down = reconcile_bookings(trigger="test")
        assert down.status == ReportStatus.FAILED and down.errors == 2 and down.checked == 0

        proxy.failing_methods = set()  # the node is back: the next run repairs everything
        healed = reconcile_bookings(trigger="test")
    assert (healed.status, healed.repaired, healed.flagged, healed.errors) == (ReportStatus.OK, 1, 1, 0)
    missed.refresh_from_db()
    assert missed.status == S.PAID
    assert ReconciliationReport.objects.count() == 3


def test_reads_many_bookings_in_few_round_trips(chain_settings, settings, make_booking, pay):
    from chain_events.rpc import get_rpc_client

    settings.RECONCILE_BATCH_SIZE = 4
    settings.RECONCILE_CALLS_PER_REQUEST = 3
    settings.MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET = 10  # one customer books them all
    bookings = [make_booking() for _ in range(10)]
    pay(bookings[3])
    client = get_rpc_client()
    before = client.round_trips
    views = read_chain_bookings([b.chain_booking_id for b in bookings], client=client)
    assert client.round_trips - before == 1  # 3 eth_calls of ≤ 4 ids in one JSON-RPC batch
    assert [views[b.chain_booking_id].status for b in bookings] == ["NONE"] * 3 + ["PAID"] + ["NONE"] * 6
    paid = views[bookings[3].chain_booking_id]
    assert paid.amount == bookings[3].amount and paid.customer == bookings[3].customer_address.lower()


def test_a_run_exports_its_differences_as_metrics(make_booking, pay):
    from reconciliation.metrics import RECONCILIATION_MISMATCHES

    def repaired_total():
        return RECONCILIATION_MISMATCHES.labels("repaired")._value.get()

    before = repaired_total()
    pay(make_booking())
    reconcile_bookings(trigger="test")
    assert repaired_total() == before + 1


def test_a_booking_the_scanner_moves_on_during_the_repair_is_not_flagged(
    chain_settings, monkeypatch, make_booking, pay, customer
):
    """Repaired to PAID at the run's block; before the re-read the scanner applies a completion
    mined after that block. Further along than the chain at `block` is repaired, not UNREPAIRED."""
    from reconciliation import chain_ingest

    from .conftest import scan_to_head

    booking = make_booking()
    pay(booking)  # the scanner is not running: the database is behind
    real_apply_repair_logs = chain_ingest.apply_repair_logs

    def apply_then_the_scanner_moves_on(*args, **kwargs):
        outcome = real_apply_repair_logs(*args, **kwargs)
        chain_settings.complete_service(booking.chain_booking_id, customer.address)
        scan_to_head(chain_settings)
        return outcome

    monkeypatch.setattr(chain_ingest, "apply_repair_logs", apply_then_the_scanner_moves_on)
    report = reconcile_bookings(trigger="test")
    assert (report.repaired, report.flagged) == (1, 0)
    booking.refresh_from_db()
    assert booking.status == S.COMPLETED and not booking.needs_attention
    assert not ReconciliationFlag.objects.exists()


# -- the way out for a booking the database has ahead of the chain ----------------------------------
@contextmanager
def _node_answering_without_logs(chain_settings, settings):
    """The configured node answers eth_getLogs with no logs (not indexed yet), the rest truly."""
    with RpcProxy(chain_settings.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.empty_logs = True
        try:
            yield
        finally:
            settings.CHAIN_RPC_URLS = [chain_settings.url]


def test_staff_rebuild_a_booking_the_database_has_ahead_of_the_chain(make_booking):
    """Reconciliation flags a database-only PAID and never rewrites it; resolving the flag alone
    brings the flag back at the next run. Rebuilding from the chain (staff, with a reason) sets
    what the chain shows and resolves the flag: the next run finds them in agreement."""
    booking = make_booking()
    force_status(booking, S.PAID)
    reconcile_bookings(trigger="test")
    flag = ReconciliationFlag.objects.get(booking=booking, kind=FlagKind.DATABASE_AHEAD)
    with pytest.raises(ActionRefused, match="reason is required"):
        rebuild_booking_from_chain(booking, actor="staff:olivia", reason=" ")

    booking = rebuild_booking_from_chain(booking, actor="staff:olivia", reason="manual edit by mistake, ticket 9")
    assert booking.status == S.PENDING_PAYMENT and not booking.needs_attention
    assert not booking.attention_items.filter(acknowledged_at=None).exists()
    change = booking.status_changes.latest("id")
    assert (change.from_status, change.to_status, change.source, change.actor) == (
        S.PAID, S.PENDING_PAYMENT, StatusSource.ADMIN, "staff:olivia")
    assert change.note == "chain state is now NONE; no stored event shows PAID"
    flag.refresh_from_db()
    assert flag.resolved_by == "staff:olivia" and "manual edit by mistake, ticket 9" in flag.resolution_note
    again = reconcile_bookings(trigger="test")
    assert (again.in_agreement, again.flagged) == (1, 0)
    assert not ReconciliationFlag.objects.filter(booking=booking, resolved_at=None).exists()


def test_rebuild_removes_a_stored_payment_whose_block_left_the_chain_and_refuses_an_incomplete_answer(
    chain_settings, settings, make_booking, pay
):
    """A payment the fast path stored, whose block then left the chain with no scan in between
    to notice. While the block is still on the chain, a node answering without its logs is
    refused; once it is gone, the row is REMOVED and the booking goes back to waiting for
    payment, its nonce free again."""
    from chain_events.models import EventStatus
    from chain_events.rpc import RpcError
    from escrow.fastpath import process_transaction

    booking = make_booking()
    process_transaction(pay(booking))
    booking.refresh_from_db()
    assert booking.status == S.PAID
    with _node_answering_without_logs(chain_settings, settings), pytest.raises(RpcError, match="incomplete answer"):
        rebuild_booking_from_chain(booking, actor="staff:olivia", reason="checking")
    booking.refresh_from_db()
    assert booking.status == S.PAID and ChainEvent.objects.get().status == EventStatus.PROCESSED

    chain_settings.rpc("anvil_reorg", [1, []])  # the payment's block is replaced: the payment is gone
    # The payment lies above the scanner's cursor: the chain sync settles it when it gets there, so
    # reconciliation raises no flag for it; staff may still rebuild the booking at once.
    assert reconcile_bookings(trigger="test").flagged == 0
    assert not ReconciliationFlag.objects.exists()
    booking = rebuild_booking_from_chain(booking, actor="staff:olivia", reason="payment lost in a reorg")
    assert booking.status == S.PENDING_PAYMENT and booking.payment_tx_hash == ""
    assert ChainEvent.objects.get().status == EventStatus.REMOVED
    assert booking.signatures.get().consumed_at is None
    assert not ReconciliationFlag.objects.filter(booking=booking, resolved_at=None).exists()


def test_rebuild_changes_nothing_when_the_logs_do_not_account_for_the_chain_state(
    chain_settings, settings, make_booking, pay
):
    """getBooking says PAID but eth_getLogs shows nothing (a node that has not indexed the
    block): rebuilt from no events, the PAID booking would go back to PENDING_PAYMENT, which
    is not what the chain shows. The rebuild is refused and rolled back whole."""
    booking = make_booking()
    pay(booking)
    force_status(booking, S.PAID)  # in line with the chain, though no event of it is stored
    changes = booking.status_changes.count()
    refused = "the chain shows PAID .* PENDING_PAYMENT: nothing was changed"
    with _node_answering_without_logs(chain_settings, settings), pytest.raises(ActionRefused, match=refused):
        rebuild_booking_from_chain(booking, actor="staff:olivia", reason="checking")
    booking.refresh_from_db()
    assert booking.status == S.PAID and booking.status_changes.count() == changes
    assert not ChainEvent.objects.exists()
