"""Cancellation policy: how much of a paid booking goes back to the customer.

The policy depends on who asks and how long before the booking's scheduled time the
request comes (all thresholds are settings, defaults in brackets):

* The provider cancels: the customer gets everything back, whenever it happens
  (the provider is backing out of the service).
* The customer cancels more than CANCELLATION_FULL_REFUND_HOURS [24] before the scheduled
  time: full refund.
* The customer cancels between CANCELLATION_FULL_REFUND_HOURS and
  CANCELLATION_PARTIAL_REFUND_HOURS [2] before it (both ends included): the customer gets
  CANCELLATION_PARTIAL_REFUND_BPS [5000 = 50 %].
* Later than that, or after the scheduled time: the customer gets
  CANCELLATION_LATE_REFUND_BPS [0].

Whatever the customer does not get back is paid out like a completion of that part:
platform and inviter fees at the booking's own rates (rounded down; the inviter part is 0
when the booking has no inviter) and the provider gets the remainder
(`escrow.money.split_cancellation`), so the four parts always sum to the amount exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from .models import Booking
from .money import BPS, CancellationSplit, split_cancellation

CUSTOMER, PROVIDER = "customer", "provider"


@dataclass(frozen=True)
class CancellationTerms:
    tier: str  # provider_cancelled | full_refund | partial_refund | late
    refund_bps: int
    split: CancellationSplit


def refund_bps_for(*, scheduled_at: datetime, requested_by: str, now: datetime) -> tuple[str, int]:
    """(tier, basis points of the amount refunded to the customer) under the configured policy."""
    if requested_by == PROVIDER:
        return "provider_cancelled", BPS
    if requested_by != CUSTOMER:
        raise ValueError(f"unknown requester role {requested_by!r}")
    lead_time = scheduled_at - now
    if lead_time > timedelta(hours=settings.CANCELLATION_FULL_REFUND_HOURS):
        return "full_refund", BPS
    if lead_time >= timedelta(hours=settings.CANCELLATION_PARTIAL_REFUND_HOURS):
        return "partial_refund", settings.CANCELLATION_PARTIAL_REFUND_BPS
    return "late", settings.CANCELLATION_LATE_REFUND_BPS


def cancellation_terms(booking: Booking, *, requested_by: str, now: datetime) -> CancellationTerms:
    tier, refund_bps = refund_bps_for(scheduled_at=booking.scheduled_at, requested_by=requested_by, now=now)
    # No inviter means no inviter part, whatever the stored rate says (the contract reverts otherwise).
    inviter_rate = booking.inviter_fee_rate if booking.inviter_address else 0
    split = split_cancellation(int(booking.amount), refund_bps, booking.platform_fee_rate, inviter_rate)
    return CancellationTerms(tier=tier, refund_bps=refund_bps, split=split)
