"""A customer cannot hold the provider's payout hostage by re-requesting a cancellation every time
the last one lapses: one live cancellation authorization at a time, and at most
MAX_CANCELLATION_REQUESTS_PER_BOOKING per booking in all, then 409 with a JSON body saying why."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from escrow.errors import BookingConflict
from escrow.models import BookingStatus, SignatureKind, StatusSource
from escrow.services import request_cancellation
from escrow.state import transition

pytestmark = pytest.mark.django_db
S = BookingStatus


@pytest.fixture
def paid_booking(customer, provider, make_booking):
    """Paid ten hours ago for a service five hours ago: a late cancellation refunds nothing."""
    booked_at = timezone.now() - timedelta(hours=10)
    booking = make_booking(customer, provider, scheduled_at=booked_at + timedelta(hours=5), now=booked_at)
    transition(booking, S.PAID, source=StatusSource.CHAIN)
    return booking


def _request_after_the_last_lapsed(booking, settings) -> None:
    """A cancellation request made once every earlier authorization (plus the grace) ran out."""
    last = booking.signatures.filter(kind=SignatureKind.CANCELLATION).order_by("-expires_at").first()
    now = timezone.now() - timedelta(hours=9) if last is None else (
        last.expires_at + timedelta(seconds=settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS + 1))
    request_cancellation(booking, requested_by="customer", reason="not sure yet", now=now)


def test_the_hostage_attempt_is_refused_after_the_cap_with_409_naming_why(clients, paid_booking, settings):
    settings.MAX_CANCELLATION_REQUESTS_PER_BOOKING = 3
    for _ in range(3):
        _request_after_the_last_lapsed(paid_booking, settings)
    paid_booking.refresh_from_db()
    assert paid_booking.status == S.PENDING_CANCELLATION  # all three lapsed unused

    response = clients["customer"].post(
        f"/api/bookings/{paid_booking.uuid}/request-cancellation/", {"reason": "once more"}, format="json",
    )

    assert response.status_code == 409, response.content
    body = response.json()
    assert body["status"] == S.PENDING_CANCELLATION
    assert "3 cancellation authorizations" in body["detail"]
    assert "MAX_CANCELLATION_REQUESTS_PER_BOOKING" in body["detail"]
    assert paid_booking.signatures.filter(kind=SignatureKind.CANCELLATION).count() == 3  # nothing signed


def test_the_provider_is_refused_too_once_the_booking_used_its_requests(clients, paid_booking, settings):
    """The cap is per booking, whoever asks: the provider's remedy then is the console's."""
    settings.MAX_CANCELLATION_REQUESTS_PER_BOOKING = 1
    _request_after_the_last_lapsed(paid_booking, settings)
    response = clients["provider"].post(
        f"/api/bookings/{paid_booking.uuid}/request-cancellation/", {"reason": "cannot come"}, format="json",
    )
    assert response.status_code == 409, response.content
    assert "1 cancellation authorization" in response.json()["detail"]


def test_requests_under_the_cap_are_signed_and_a_live_one_is_still_refused(paid_booking, settings):
    settings.MAX_CANCELLATION_REQUESTS_PER_BOOKING = 3
    _request_after_the_last_lapsed(paid_booking, settings)
    live_until = paid_booking.signatures.get(kind=SignatureKind.CANCELLATION).expires_at
    with pytest.raises(BookingConflict, match="already outstanding"):
        request_cancellation(paid_booking, requested_by="customer", reason="again", now=live_until)
    _request_after_the_last_lapsed(paid_booking, settings)
    assert paid_booking.signatures.filter(kind=SignatureKind.CANCELLATION).count() == 2
