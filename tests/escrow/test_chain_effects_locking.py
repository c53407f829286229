"""Locking bookings for the chain sync reads what the lock holder committed, fee row included."""
from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from escrow import chain_effects
from escrow.models import Booking, PlatformFee


@pytest.mark.django_db(transaction=True)
def test_a_booking_locked_after_waiting_sees_the_fee_row_the_holder_committed(customer, provider, make_booking):
    """Another writer (the receipt fast path applying a completion) holds the booking's lock and
    creates its fee row. The waiting writer must see that row once it has the lock: planned
    against "no fee", it would insert a second one and fail on the one-to-one key."""
    booking = make_booking(customer, provider)
    locked, release = threading.Event(), threading.Event()

    def holder():
        try:
            with transaction.atomic():
                Booking.objects.select_for_update().get(pk=booking.pk)
                PlatformFee.objects.create(booking_id=booking.pk, platform_amount=10, inviter_amount=0,
                                           provider_amount=90, tx_hash="0x" + "ab" * 32)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(10)
    with transaction.atomic():
        timer = threading.Timer(0.5, release.set)  # commit while this side waits for the lock
        timer.start()
        snapshot = chain_effects.lock_bookings([booking.chain_booking_id])[booking.chain_booking_id]
    thread.join(10)
    assert snapshot.fee is not None
    assert (snapshot.fee.platform_amount, snapshot.fee.provider_amount) == (10, 90)
