"""Reads of bookings that several edges need (the console, its filters, health and metrics)."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .models import Booking, BookingStatus

# A booking in a transient state this long (or PAID this long past its auto-complete time)
# counts as stuck on the admin index; the booking list filter offers other ages.
STUCK_AFTER = timedelta(hours=1)


def stuck_bookings(older_than: timedelta = STUCK_AFTER, *, now=None):
    """Bookings that should have moved on by now.

    - PENDING_PAYMENT / PENDING_COMPLETION / PENDING_CANCELLATION unchanged for `older_than`
      (authorizations expire in minutes and reconciliation settles them every few minutes);
    - PAID while auto-complete has been due for `older_than` (scheduled time + the service
      window + `older_than` in the past).
    """
    now = now or timezone.now()
    transient = [BookingStatus.PENDING_PAYMENT, BookingStatus.PENDING_COMPLETION, BookingStatus.PENDING_CANCELLATION]
    window = timedelta(seconds=getattr(settings, "AUTO_COMPLETE_AFTER_SECONDS", 2 * 3600))
    return Booking.objects.filter(
        Q(status__in=transient, status_changed_at__lt=now - older_than)
        | Q(status=BookingStatus.PAID, scheduled_at__lt=now - window - older_than)
    )
