"""The booking state machine: transitions declared once, illegal API requests → 409 with a
message, every change audited, chain-sourced transitions win over API-sourced ones."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from escrow.errors import BookingConflict
from escrow.models import BookingStatus, BookingStatusChange, StatusSource
from escrow.services import expire_unused_authorizations, issue_payment_authorization
from escrow.state import ALLOWED_TRANSITIONS, TERMINAL_STATUSES, IllegalTransition, can_transition, transition

pytestmark = pytest.mark.django_db
S = BookingStatus


def test_every_status_is_declared_and_terminal_ones_lead_nowhere():
    assert set(ALLOWED_TRANSITIONS) == set(S.values)
    assert all(target in S.values for targets in ALLOWED_TRANSITIONS.values() for target in targets)
    assert {S.COMPLETED, S.CANCELLED, S.FAILED} == TERMINAL_STATUSES
    assert not can_transition(S.PENDING_PAYMENT, S.COMPLETED)
    assert can_transition(S.PAID, S.PENDING_CANCELLATION)


@pytest.mark.parametrize("source", [StatusSource.API, StatusSource.ADMIN])
def test_an_illegal_transition_from_the_api_or_staff_raises_and_changes_nothing(
    customer, provider, make_booking, source,
):
    booking = make_booking(customer, provider)
    with pytest.raises(IllegalTransition, match="cannot go from PENDING_PAYMENT to COMPLETED"):
        transition(booking, S.COMPLETED, source=source, actor="wallet:x")
    booking.refresh_from_db()
    assert booking.status == S.PENDING_PAYMENT
    assert list(booking.status_changes.values_list("to_status", flat=True)) == [S.PENDING_PAYMENT]


def test_every_transition_is_audited_with_source_actor_and_tx(customer, provider, make_booking):
    booking = make_booking(customer, provider, actor="wallet:" + customer.address)
    tx = "0x" + "ab" * 32
    transition(booking, S.PAID, source=StatusSource.CHAIN, actor="scanner", tx_hash=tx)
    assert transition(booking, S.PAID, source=StatusSource.CHAIN) is None  # idempotent: no second row
    rows = list(booking.status_changes.values_list("from_status", "to_status", "source", "actor", "tx_hash"))
    assert rows == [
        ("", S.PENDING_PAYMENT, StatusSource.API, "wallet:" + customer.address, ""),
        (S.PENDING_PAYMENT, S.PAID, StatusSource.CHAIN, "scanner", tx),
    ]


@pytest.mark.parametrize(
    "status,detail",
    [
        (S.PENDING_PAYMENT, "cannot go from PENDING_PAYMENT to PENDING_CANCELLATION"),
        (S.CANCELLED, "cannot go from CANCELLED to PENDING_CANCELLATION"),
        (S.COMPLETED, "cannot go from COMPLETED to PENDING_CANCELLATION"),
    ],
)
def test_the_api_answers_an_illegal_transition_with_409_and_a_message(
    clients, customer, provider, make_booking, status, detail,
):
    booking = make_booking(customer, provider)
    if status != S.PENDING_PAYMENT:
        transition(booking, status, source=StatusSource.CHAIN)
    response = clients["customer"].post(
        f"/api/bookings/{booking.uuid}/request-cancellation/", {"reason": "x"}, format="json",
    )
    assert response.status_code == 409
    body = response.json()
    assert detail in body["detail"]
    assert (body["status"], body["requested_status"]) == (status, S.PENDING_CANCELLATION)
    assert not booking.signatures.exists()


def test_authorizing_a_paid_booking_is_409(clients, customer, provider, make_booking):
    booking = make_booking(customer, provider)
    transition(booking, S.PAID, source=StatusSource.CHAIN)
    response = clients["customer"].post(f"/api/bookings/{booking.uuid}/authorize-payment/", format="json")
    assert response.status_code == 409
    assert response.json()["status"] == S.PAID and "PENDING_PAYMENT" in response.json()["detail"]


def test_chain_transitions_apply_whatever_the_database_believed(customer, provider, make_booking):
    """The chain is the truth for money: even a 'terminal' status yields to it (e.g. after a reorg)."""
    booking = make_booking(customer, provider)
    transition(booking, S.PAID, source=StatusSource.CHAIN)
    transition(booking, S.CANCELLED, source=StatusSource.CHAIN)
    with pytest.raises(IllegalTransition):
        transition(booking, S.PAID, source=StatusSource.API)
    transition(booking, S.PAID, source=StatusSource.RECONCILIATION, note="reorg: the cancellation left the chain")
    booking.refresh_from_db()
    assert booking.status == S.PAID
    assert booking.status_changes.last().source == StatusSource.RECONCILIATION


def test_a_payment_seen_on_chain_wins_over_the_authorization_expiry(customer, provider, make_booking, settings):
    settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS = 0
    later = timezone.now() + timedelta(hours=1)
    # Chain first: the expiry job finds the booking paid and leaves it alone.
    paid_first = make_booking(customer, provider)
    issue_payment_authorization(paid_first)
    transition(paid_first, S.PAID, source=StatusSource.CHAIN)
    # Expiry first: the payment mined before the expiry still moves the booking to PAID.
    expired_first = make_booking(customer, provider)
    issue_payment_authorization(expired_first)
    assert expire_unused_authorizations(now=later) == {"expired": 1, "cancellation_lapsed": 0}
    expired_first.refresh_from_db()
    assert expired_first.status == S.EXPIRED
    transition(expired_first, S.PAID, source=StatusSource.CHAIN)
    paid_first.refresh_from_db()
    expired_first.refresh_from_db()
    assert (paid_first.status, expired_first.status) == (S.PAID, S.PAID)


def test_a_lapsed_cancellation_never_undoes_a_chain_completion(clients, customer, provider, make_booking, settings):
    settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS = 0
    booking = make_booking(customer, provider)
    transition(booking, S.PAID, source=StatusSource.CHAIN)
    response = clients["customer"].post(
        f"/api/bookings/{booking.uuid}/request-cancellation/", {"reason": "x"}, format="json",
    )
    assert response.json()["booking_status"] == S.PENDING_CANCELLATION
    # Meanwhile the customer completed the service on chain: the chain's COMPLETED applies.
    transition(booking, S.COMPLETED, source=StatusSource.CHAIN)
    assert expire_unused_authorizations(now=timezone.now() + timedelta(hours=1))["cancellation_lapsed"] == 0
    booking.refresh_from_db()
    assert booking.status == S.COMPLETED
    assert BookingStatusChange.objects.filter(booking=booking).last().to_status == S.COMPLETED


def test_a_lapsed_cancellation_returns_the_booking_to_where_it_was(clients, customer, provider, make_booking, settings):
    settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS = 0
    booking = make_booking(customer, provider)
    transition(booking, S.PAID, source=StatusSource.CHAIN)
    clients["provider"].post(f"/api/bookings/{booking.uuid}/request-cancellation/", {"reason": "ill"}, format="json")
    again = clients["customer"].post(
        f"/api/bookings/{booking.uuid}/request-cancellation/", {"reason": "x"}, format="json",
    )
    assert again.status_code == 409 and "already outstanding" in again.json()["detail"]
    assert expire_unused_authorizations(now=timezone.now() + timedelta(hours=1))["cancellation_lapsed"] == 1
    booking.refresh_from_db()
    assert booking.status == S.PAID


def test_new_cancellation_terms_wait_for_the_grace_after_the_last_ones_expire(
    clients, customer, provider, make_booking, settings
):
    """The contract takes an authorization up to its expiry by the chain's clock, which may
    trail ours: until the grace has passed the old terms may still execute, so none are signed."""
    from escrow.services import request_cancellation

    settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS = 120
    booking = make_booking(customer, provider)
    transition(booking, S.PAID, source=StatusSource.CHAIN)
    first = clients["customer"].post(
        f"/api/bookings/{booking.uuid}/request-cancellation/", {"reason": "x"}, format="json",
    )
    assert first.status_code == 200, first.content
    expiry = booking.signatures.get(kind="cancellation").expires_at
    with pytest.raises(BookingConflict):
        request_cancellation(booking, requested_by="customer", reason="again", now=expiry + timedelta(seconds=60))
    signed, _ = request_cancellation(
        booking, requested_by="customer", reason="again", now=expiry + timedelta(seconds=121),
    )
    assert booking.signatures.filter(kind="cancellation").count() == 2
