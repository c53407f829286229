"""Orphans refunded on chain, operator auto-completion, and the emergency pause, on a real anvil."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from web3.exceptions import ContractCustomError

from chain_events.models import Orphan, OrphanStatus
from common.singleflight import single_flight
from contracts.artifacts import STATUS_CANCELLED, STATUS_COMPLETED
from escrow.models import BookingStatus, PlatformFee, ProviderEarnings
from escrow.services import request_cancellation
from escrow.signing import sign_payment_authorization
from reconciliation import tasks
from reconciliation.chain_reads import read_contract_paused
from reconciliation.models import EmergencyPause, SentTransaction, TxPurpose, TxStatus
from reconciliation.operations import (
    ActionRefused,
    auto_complete_bookings,
    complete_booking_by_operator,
    emergency_cancel_booking,
    ignore_orphan,
    pause_contract,
    refund_orphan,
    unpause_contract,
)
from reconciliation.selectors import contract_paused
from reconciliation.transactions import TransactionRejected

from .conftest import scan_to_head

pytestmark = [pytest.mark.django_db, pytest.mark.chain]
S = BookingStatus
ENFORCED_PAUSE = "0xd93c0665"  # selector of OpenZeppelin Pausable's EnforcedPause()


@pytest.fixture
def make_orphan(chain_settings, customer, make_booking):
    """Pay on chain for a booking id the database does not know (its row is gone), then scan."""

    def make(amount="42.00") -> Orphan:
        booking = make_booking(amount=amount)
        auth = sign_payment_authorization(booking)
        chain_booking_id = booking.chain_booking_id
        booking.signatures.all().delete()
        booking.delete()
        chain_settings.pay_booking(auth.message, auth.signature, customer.address)
        scan_to_head(chain_settings)
        return Orphan.objects.get(chain_booking_id=chain_booking_id)

    return make


def test_an_orphan_is_refunded_on_chain_and_resolved_when_its_log_is_scanned(chain_settings, customer, make_orphan):
    chain = chain_settings
    orphan = make_orphan()
    assert (orphan.status, orphan.chain_status, orphan.amount) == (OrphanStatus.OPEN, "PAID", 42_000_000)
    balance_before = chain.usdc_balance(customer.address)

    record = refund_orphan(orphan, actor="staff:op", reason="payment for a booking we never created")

    assert (record.purpose, record.status, record.orphan_id) == (TxPurpose.EMERGENCY_CANCEL, TxStatus.MINED, orphan.pk)
    assert record.actor == "staff:op" and record.reason == "payment for a booking we never created"
    assert chain.get_booking(orphan.chain_booking_id)[-1] == STATUS_CANCELLED
    assert chain.usdc_balance(customer.address) == balance_before + 42_000_000
    with pytest.raises(ActionRefused, match="already sent"):
        refund_orphan(orphan, actor="staff:op2", reason="double click")

    scan_to_head(chain)  # the BookingCancelled log goes through the normal event path
    orphan.refresh_from_db()
    assert (orphan.status, orphan.chain_status, orphan.resolved_by) == (OrphanStatus.RESOLVED, "CANCELLED", "chain")
    assert "refund sent by staff:op" in orphan.note
    with pytest.raises(ActionRefused, match="not OPEN or IGNORED"):
        refund_orphan(orphan, actor="staff:op", reason="again")


def test_ignore_an_orphan_needs_a_reason(make_orphan, settings):
    orphan = make_orphan()
    with pytest.raises(ActionRefused, match="reason"):
        ignore_orphan(orphan, actor="staff:op", reason="  ")
    ignored = ignore_orphan(orphan, actor="staff:op", reason="customer paid twice; refunded off-chain")
    assert ignored.status == OrphanStatus.IGNORED and "customer paid twice" in ignored.note
    settings.ORPHAN_AUTO_REFUND, settings.ORPHAN_REFUND_GRACE_SECONDS = True, 0
    assert tasks.auto_refund_orphans()["refunded"] == 0  # the policy never refunds an ignored one


def test_an_ignored_orphan_can_still_be_refunded_and_is_reopened_first(chain_settings, customer, make_orphan):
    chain = chain_settings
    orphan = ignore_orphan(make_orphan(), actor="staff:op", reason="looked like a duplicate")
    balance_before = chain.usdc_balance(customer.address)
    record = refund_orphan(orphan, actor="staff:lead", reason="not a duplicate after all")
    assert record.status == TxStatus.MINED
    assert chain.usdc_balance(customer.address) == balance_before + 42_000_000
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.OPEN and "reopened by staff:lead to refund it" in orphan.note
    scan_to_head(chain)
    orphan.refresh_from_db()
    assert (orphan.status, orphan.chain_status, orphan.resolved_by) == (OrphanStatus.RESOLVED, "CANCELLED", "chain")


def test_orphan_auto_refund_follows_the_policy_and_grace(settings, make_orphan):
    orphan = make_orphan()
    settings.ORPHAN_AUTO_REFUND = False
    assert tasks.auto_refund_orphans() == {"enabled": False, "refunded": 0, "failed": 0, "skipped": 0}
    settings.ORPHAN_AUTO_REFUND = True
    settings.ORPHAN_REFUND_GRACE_SECONDS = 3600
    assert tasks.auto_refund_orphans()["refunded"] == 0  # still in its grace period
    settings.ORPHAN_REFUND_GRACE_SECONDS = 0
    assert tasks.auto_refund_orphans()["refunded"] == 1
    record = SentTransaction.objects.get(orphan=orphan)
    assert record.status == TxStatus.SUBMITTED and record.actor == "system:orphan-auto-refund"
    tasks.settle_transactions()
    record.refresh_from_db()
    assert record.status == TxStatus.MINED


def test_orphan_auto_refund_sends_and_returns_without_waiting_for_receipts(chain_settings, settings, make_orphan):
    """A periodic job never waits for receipts while it holds its lock: the settle job records
    the outcome. (Staff's refund from the console still waits and shows it.)"""
    chain = chain_settings
    orphan = make_orphan()
    settings.ORPHAN_AUTO_REFUND, settings.ORPHAN_REFUND_GRACE_SECONDS = True, 0
    settings.TX_RECEIPT_TIMEOUT_SECONDS, settings.TX_POLL_SECONDS = 3.0, 0.05
    chain.rpc("evm_setAutomine", [False])
    try:
        started = time.monotonic()
        counts = tasks.auto_refund_orphans()
        assert time.monotonic() - started < settings.TX_RECEIPT_TIMEOUT_SECONDS
        assert (counts["refunded"], counts["failed"]) == (1, 0)
        assert SentTransaction.objects.get(orphan=orphan).status == TxStatus.SUBMITTED
        chain.mine()
    finally:
        chain.rpc("evm_setAutomine", [True])
    assert tasks.settle_transactions()["submitted"]["mined"] == 1
    assert chain.get_booking(orphan.chain_booking_id)[-1] == STATUS_CANCELLED


def test_auto_complete_after_the_window_completes_through_the_event_path(
    chain_settings, make_booking, pay, provider
):
    chain = chain_settings
    soon = timezone.now() + timedelta(seconds=30)
    due = make_booking(amount="200.00", scheduled_at=soon)
    disputed = make_booking(scheduled_at=soon)
    pay(due)
    pay(disputed)
    scan_to_head(chain)
    disputed.refresh_from_db()
    request_cancellation(disputed, requested_by="customer", reason="service not delivered")
    earnings_before = ProviderEarnings.objects.filter(provider_address=provider.address).first()

    # Before the window: nothing is due.
    assert auto_complete_bookings()["sent"] == 0
    # Past the window (scheduled + 2 h) on both clocks: ours and the chain's.
    chain.increase_time(3 * 3600)
    later = timezone.now() + timedelta(hours=3)
    counts = auto_complete_bookings(now=later)

    assert (counts["sent"], counts["failed"]) == (1, 0)
    record = SentTransaction.objects.get(booking=due)
    assert record.status == TxStatus.SUBMITTED  # sent, not waited for: the settle job records the outcome
    assert tasks.settle_transactions()["submitted"]["mined"] == 1
    record.refresh_from_db()
    assert (record.purpose, record.status, record.actor) == (
        TxPurpose.OPERATOR_COMPLETE, TxStatus.MINED, "system:auto-complete")
    assert chain.get_booking(due.chain_booking_id)[-1] == STATUS_COMPLETED
    due.refresh_from_db()
    assert due.status == S.PAID  # the database moves only when the event is processed
    scan_to_head(chain)
    due.refresh_from_db()
    disputed.refresh_from_db()
    assert due.status == S.COMPLETED and due.completion_tx_hash == record.tx_hash
    assert disputed.status == S.PENDING_CANCELLATION
    fee = PlatformFee.objects.get(booking=due)
    assert (fee.platform_amount, fee.provider_amount, fee.inviter_amount) == (20_000_000, 180_000_000, 0)
    earnings = ProviderEarnings.objects.get(provider_address=provider.address)
    before = earnings_before.total_earned if earnings_before else 0
    assert earnings.total_earned - before == 180_000_000
    # Sent once: a second run finds nothing due.
    assert auto_complete_bookings(now=later)["sent"] == 0


def test_pause_stops_payments_while_scanning_and_refunds_keep_working(
    chain_settings, settings, customer, make_booking, make_orphan
):
    chain = chain_settings
    orphan = make_orphan()
    assert contract_paused() is False

    entry = pause_contract(actor="staff:op", reason="incident 42: signer key suspected leaked")

    assert entry.succeeded and entry.transaction.purpose == TxPurpose.PAUSE
    assert entry.transaction.status == TxStatus.MINED and entry.reason.startswith("incident 42")
    assert contract_paused() is True  # the cache was cleared by the pause
    booking = make_booking()
    auth = sign_payment_authorization(booking)
    with pytest.raises(ContractCustomError, match=ENFORCED_PAUSE):  # payments are blocked
        chain.pay_booking(auth.message, auth.signature, customer.address)
    assert auto_complete_bookings()["paused"] is True

    refund = refund_orphan(orphan, actor="staff:op", reason="refund during the incident")
    assert refund.status == TxStatus.MINED
    scan_to_head(chain)
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.RESOLVED

    with pytest.raises(ActionRefused, match="CONTRACT_OWNER_PRIVATE_KEY"):
        unpause_contract(actor="staff:op", reason="incident over")
    settings.CONTRACT_OWNER_PRIVATE_KEY = _secret(chain.accounts.deployer.key.to_0x_hex())
    unpaused = unpause_contract(actor="staff:owner", reason="incident over")
    assert unpaused.succeeded and contract_paused() is False
    assert list(EmergencyPause.objects.order_by("created_at").values_list("action", "succeeded")) == [
        ("pause", True), ("unpause", False), ("unpause", True)]


def test_pausing_twice_is_refused_by_the_chain_and_recorded(chain_settings):
    pause_contract(actor="staff:op", reason="first")
    with pytest.raises(TransactionRejected, match="EnforcedPause"):
        pause_contract(actor="staff:op", reason="second")
    failed = EmergencyPause.objects.get(reason="second")
    assert not failed.succeeded and failed.transaction.status == TxStatus.FAILED


def test_commands(chain_settings, make_orphan, make_booking, pay):
    from io import StringIO

    booking = make_booking()
    pay(booking)
    out = StringIO()
    call_command("reconcile", "--once", stdout=out)
    assert "1 repaired" in out.getvalue()
    orphan = make_orphan()
    out = StringIO()
    call_command("refund_orphan", str(orphan.pk), "--reason", "unknown payment", "--actor", "command:test", stdout=out)
    assert "refunded in tx 0x" in out.getvalue()
    assert SentTransaction.objects.get(orphan=orphan).actor == "command:test"
    out = StringIO()
    call_command("emergency_pause", "--reason", "drill", stdout=out)
    assert "contract paused" in out.getvalue() and read_contract_paused()
    assert EmergencyPause.objects.get().reason == "drill"


def _secret(value):
    from common.config import Secret

    return Secret(value)


def test_a_refund_with_the_rpc_down_is_recorded_as_failed_and_changes_nothing(settings, make_orphan):
    from chain_events.rpc import RpcError

    orphan = make_orphan()
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]  # nothing listens there
    settings.RPC_RETRIES = 0
    with pytest.raises(RpcError):
        refund_orphan(orphan, actor="staff:op", reason="refund")
    record = SentTransaction.objects.get(orphan=orphan)
    assert record.status == TxStatus.FAILED and record.error and record.nonce is None and not record.tx_hash
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.OPEN
    from reconciliation.models import OperatorNonce

    assert not OperatorNonce.objects.exists()  # no nonce was taken


def test_tasks_are_scheduled_and_run_single_flight(chain_settings, settings, make_booking, pay):
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"reconciliation.reconcile_bookings", "reconciliation.auto_complete_bookings",
            "reconciliation.auto_refund_orphans"} <= scheduled
    booking = make_booking()
    pay(booking)
    with single_flight(tasks.lock_name("reconcile")) as held:  # a run in progress elsewhere
        assert held
        assert tasks.reconcile_bookings() == {"skipped": True}
    result = tasks.reconcile_bookings()
    assert (result["status"], result["repaired"]) == ("OK", 1)
    assert tasks.auto_complete_bookings()["sent"] == 0


def test_a_send_already_in_progress_elsewhere_is_refused(make_booking, make_orphan):
    """Two clicks or two workers never send the same refund or completion twice: while another
    process holds the action's single-flight lock, the second is refused and sends nothing."""
    booking = make_booking()
    orphan = make_orphan()
    with single_flight(f"reconciliation:booking-tx:{booking.pk}") as held:
        assert held
        for action in (emergency_cancel_booking, complete_booking_by_operator):
            with pytest.raises(ActionRefused, match="the same action is already in progress"):
                action(booking, actor="staff:op2", reason="second click")
    with single_flight(f"reconciliation:orphan-refund:{orphan.pk}"), \
            pytest.raises(ActionRefused, match="the same action is already in progress"):
        refund_orphan(orphan, actor="staff:op2", reason="second click")
    assert not SentTransaction.objects.exists()
