"""The booking state machine: allowed transitions declared once, every change audited.

Transitions requested by the API or staff must follow `ALLOWED_TRANSITIONS`. Transitions
that come from the chain (or from reconciliation, which reads the chain) always apply:
the chain is the truth for money, so the database follows it whatever it believed.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .models import Booking, BookingStatus, BookingStatusChange, StatusSource

S = BookingStatus

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING_PAYMENT: frozenset({S.PAID, S.EXPIRED, S.FAILED}),
    S.EXPIRED: frozenset({S.PENDING_PAYMENT, S.PAID}),
    S.PAID: frozenset({S.PENDING_COMPLETION, S.COMPLETED, S.PENDING_CANCELLATION, S.CANCELLED}),
    S.PENDING_COMPLETION: frozenset({S.COMPLETED, S.PAID, S.PENDING_CANCELLATION, S.CANCELLED}),
    S.PENDING_CANCELLATION: frozenset({S.CANCELLED, S.PAID, S.PENDING_COMPLETION, S.COMPLETED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
    S.FAILED: frozenset(),
}
TERMINAL_STATUSES = frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if not targets)
CHAIN_SOURCES = frozenset({StatusSource.CHAIN, StatusSource.RECONCILIATION})


class IllegalTransition(Exception):
    """The requested status change is not allowed from the booking's current status."""

    def __init__(self, booking: Booking, to_status: str):
        self.booking = booking
        self.from_status = booking.status
        self.to_status = to_status
        super().__init__(f"booking cannot go from {booking.status} to {to_status}")


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in ALLOWED_TRANSITIONS.get(from_status, frozenset())


def transition(
    booking: Booking,
    to_status: str,
    *,
    source: str,
    actor: str = "",
    tx_hash: str = "",
    note: str = "",
    update_fields: tuple[str, ...] = (),
) -> BookingStatusChange | None:
    """Move `booking` to `to_status`, save it (plus `update_fields`) and record the change.

    Returns None when the booking already has that status (idempotent). The caller holds the
    row lock (select_for_update) when concurrent changes are possible.
    """
    if to_status not in BookingStatus.values:
        raise ValueError(f"unknown status {to_status!r}")
    if booking.status == to_status:
        if update_fields:
            booking.save(update_fields=[*update_fields, "updated_at"])
        return None
    if source not in CHAIN_SOURCES and not can_transition(booking.status, to_status):
        raise IllegalTransition(booking, to_status)
    from_status = booking.status
    with transaction.atomic():
        booking.status = to_status
        booking.status_changed_at = timezone.now()
        booking.save(update_fields=["status", "status_changed_at", "updated_at", *update_fields])
        return BookingStatusChange.objects.create(
            booking=booking,
            from_status=from_status,
            to_status=to_status,
            source=source,
            actor=actor[:200],
            tx_hash=tx_hash,
            note=note,
        )


def record_creation(booking: Booking, *, source: str, actor: str = "") -> BookingStatusChange:
    """The first audit row of a booking: ∅ → its initial status."""
    return BookingStatusChange.objects.create(
        booking=booking, from_status="", to_status=booking.status, source=source, actor=actor[:200]
    )
