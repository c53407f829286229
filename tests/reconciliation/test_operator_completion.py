"""The provider's payout cannot be held hostage: auto-complete takes a booking whose cancellation
lapsed unused, and operators can complete a booking for its provider from the console
("Complete for the provider": completeServiceByOperator, reason required, audited, sent by the
worker), where before their only remedy refunded the customer in full."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from common.console import OPERATORS_GROUP
from contracts.artifacts import STATUS_COMPLETED
from escrow.models import BookingStatus, StatusSource
from escrow.services import request_cancellation
from escrow.state import transition
from reconciliation.models import SentTransaction, TxPurpose, TxStatus
from reconciliation.operations import ActionRefused, auto_complete_bookings, auto_complete_candidates
from reconciliation.operations import complete_booking_by_operator as complete
from reconciliation.transactions import wait_for_transaction
from tests.console.test_admin_permissions import REASON, changelist, run_action
from tests.console.test_console_sends import history, run_as_the_worker, take_queued_tasks
from tests.escrow.helpers import wallet

from .conftest import paid_past_service, scan_to_head

S = BookingStatus


def _paid_long_ago(label: str):
    return paid_past_service(wallet(f"{label} customer").address, wallet(f"{label} provider").address,
                             amount="30.00")


def _cancellation_requested(booking, *, hours_ago: float):
    """The customer asked to cancel `hours_ago` (the authorization lives AUTHORIZATION_TTL_SECONDS)."""
    request_cancellation(booking, requested_by="customer", reason="changed my mind",
                         now=timezone.now() - timedelta(hours=hours_ago))
    booking.refresh_from_db()
    assert booking.status == S.PENDING_CANCELLATION
    return booking


# -- auto-complete ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_auto_complete_takes_a_booking_whose_cancellation_lapsed_unused():
    lapsed = _cancellation_requested(_paid_long_ago("lapsed"), hours_ago=2)
    live = _paid_long_ago("live")
    request_cancellation(live, requested_by="customer", reason="changed my mind")
    paid = _paid_long_ago("paid")

    due = set(auto_complete_candidates(timezone.now()))

    assert due == {lapsed, paid}  # a live cancellation can still be executed: not yet


@pytest.mark.django_db
def test_the_lapse_counts_from_the_grace_after_the_expiry(settings):
    settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS = 3600
    booking = _cancellation_requested(_paid_long_ago("grace"), hours_ago=0.5)
    assert booking not in auto_complete_candidates(timezone.now())
    assert booking in auto_complete_candidates(timezone.now() + timedelta(hours=1))


@pytest.mark.chain
@pytest.mark.django_db
def test_a_lapsed_cancellation_is_completed_on_chain_by_auto_complete(chain_settings, make_booking, pay):
    chain = chain_settings
    booking = make_booking(scheduled_at=timezone.now() + timedelta(seconds=30))
    pay(booking)
    scan_to_head(chain)
    booking.refresh_from_db()
    _cancellation_requested(booking, hours_ago=1)
    chain.increase_time(3 * 3600)

    counts = auto_complete_bookings(now=timezone.now() + timedelta(hours=3))

    assert (counts["sent"], counts["failed"]) == (1, 0)
    record = SentTransaction.objects.get(booking=booking)
    assert record.purpose == TxPurpose.OPERATOR_COMPLETE
    assert wait_for_transaction(record).status == TxStatus.MINED
    assert chain.get_booking(booking.chain_booking_id)[-1] == STATUS_COMPLETED
    scan_to_head(chain)
    booking.refresh_from_db()
    assert booking.status == S.COMPLETED


# -- the console: "Complete for the provider" ---------------------------------------------------------
@pytest.fixture
def operator_client(django_user_model):
    group, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
    user = django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    user.groups.add(group)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.chain
@pytest.mark.django_db
def test_operators_complete_a_hostage_booking_for_its_provider(
    chain_settings, settings, make_booking, pay, provider, operator_client
):
    chain = chain_settings
    booking = make_booking(amount="40.00")
    pay(booking)
    scan_to_head(chain)
    booking.refresh_from_db()
    _cancellation_requested(booking, hours_ago=1)
    chain.increase_time(3601)  # the contract's operator delay after payment
    settings.OPERATOR_PRIVATE_KEY = None  # the web process holds no operator key

    response = run_action(operator_client, "escrow_booking", "complete_for_provider", booking.pk,
                          confirm="yes", reason=REASON)

    assert response.status_code == 302
    assert not SentTransaction.objects.exists()  # queued for the worker, not sent from the web process
    queued = take_queued_tasks()
    assert queued == [("reconciliation.send_operator_completion", [booking.pk, "staff:olivia", REASON], {})]
    [outcome] = run_as_the_worker(settings, queued)
    sent = SentTransaction.objects.get(booking=booking)
    assert outcome == {"done": True, "tx_hash": sent.tx_hash, "status": TxStatus.MINED}
    assert (sent.purpose, sent.actor, sent.reason) == (TxPurpose.OPERATOR_COMPLETE, "staff:olivia", REASON)
    assert chain.get_booking(booking.chain_booking_id)[-1] == STATUS_COMPLETED
    assert history(booking)[0].startswith(f"Complete for the provider: {REASON}")
    assert history(booking)[-1] == f"Complete for the provider sent by the worker: tx {sent.tx_hash} (MINED)"
    scan_to_head(chain)
    booking.refresh_from_db()
    assert booking.status == S.COMPLETED


def _confirm_completion(client, booking):
    """The confirmation page's POST, following the redirect to the page with the console's messages."""
    data = {"action": "complete_for_provider", "_selected_action": [booking.pk], "confirm": "yes", "reason": REASON}
    return client.post(changelist("escrow_booking"), data, follow=True)


@pytest.mark.django_db
def test_completion_for_the_provider_is_refused_while_a_cancellation_can_still_be_executed(operator_client):
    booking = _paid_long_ago("console-live")
    request_cancellation(booking, requested_by="customer", reason="changed my mind")
    response = _confirm_completion(operator_client, booking)
    assert "a cancellation authorization can still be executed until" in response.content.decode()
    assert take_queued_tasks() == []
    with pytest.raises(ActionRefused, match="can still be executed"):
        complete(booking, actor="staff:olivia", reason=REASON)


@pytest.mark.django_db
def test_completion_for_the_provider_needs_a_paid_booking(operator_client):
    booking = _paid_long_ago("console-unpaid")
    transition(booking, S.CANCELLED, source=StatusSource.CHAIN)
    response = _confirm_completion(operator_client, booking)
    assert "not done: the booking is CANCELLED, not PAID" in response.content.decode()
    assert take_queued_tasks() == []
