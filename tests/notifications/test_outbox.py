"""The outbox on real PostgreSQL and Redis: one notification per status change, in its
transaction; seq in commit order; the relay publishes to the channel layer, then signals."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from redis.asyncio import Redis

from escrow.models import BookingStatus, BookingStatusChange
from escrow.services import create_booking
from escrow.state import transition
from notifications.models import Notification
from notifications.relay import Relay
from notifications.signals import notifications_published
from tests.escrow.helpers import wallet

E = BookingStatus.EXPIRED


def _booking(label: str = "outbox"):
    return create_booking(
        customer=wallet(f"{label}-customer").address, provider=wallet(f"{label}-provider").address,
        amount="10", scheduled_at=timezone.now() + timedelta(days=2),
    )


@pytest.mark.django_db
def test_a_status_change_writes_one_notification_in_its_transaction_and_a_rollback_leaves_none():
    booking = _booking()
    created = Notification.objects.get(booking=booking)
    assert (created.kind, created.from_status, created.to_status, created.seq) == (
        "booking.created", "", BookingStatus.PENDING_PAYMENT, None)

    with transaction.atomic():
        change = transition(booking, BookingStatus.EXPIRED, source="api", actor="test")
        mine = Notification.objects.get(status_change=change)  # visible inside the writing transaction
    assert (mine.kind, mine.from_status, mine.to_status, mine.source) == (
        "booking.expired", BookingStatus.PENDING_PAYMENT, BookingStatus.EXPIRED, "api")
    assert (mine.customer_address, mine.provider_address) == (booking.customer_address, booking.provider_address)

    with pytest.raises(RuntimeError), transaction.atomic():
        transition(booking, BookingStatus.PENDING_PAYMENT, source="api", actor="test")
        assert Notification.objects.filter(booking=booking).count() == 3
        raise RuntimeError("rolled back")
    assert Notification.objects.filter(booking=booking).count() == 2
    assert BookingStatusChange.objects.filter(booking=booking).count() == 2

    # History that moves nothing (a reverted transaction's reason) is not a change: no notification.
    BookingStatusChange.objects.create(booking=booking, from_status=E, to_status=E, source="chain",
                                       tx_hash="0x" + "ab" * 32, note="transaction reverted: NonceAlreadyUsed(7)",
                                       moves_booking=False)
    assert Notification.objects.filter(booking=booking).count() == 2


def _raw_connection() -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(dbname=s["NAME"], user=s["USER"], host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432)


async def _subscribed_to_staff():
    """A channel of this event loop in the staff group, once Redis has the subscription (the
    pub/sub layer delivers only to subscriptions open when a message is published)."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("staff", channel)
    redis = Redis.from_url(settings.REDIS_URL)
    group_channel = f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__staff"
    try:
        for _ in range(250):
            if (await redis.pubsub_numsub(group_channel))[0][1]:
                return layer, channel
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
    raise AssertionError("the staff subscription never reached Redis")


@pytest.mark.django_db(transaction=True)
def test_seq_follows_commit_order_not_id_and_the_relay_publishes_then_signals():
    booking = _booking()
    signalled: list[list[int]] = []

    def receiver(sender, seqs, **_):
        signalled.append(seqs)

    def relay_three():  # in a thread of its own: the relay runs its own event loop
        relay = Relay(batch_size=100)
        try:
            assert relay.relay_once() == 1  # the creation
            # A: a change whose notification takes the lower id and commits last (another connection).
            with _raw_connection() as late:
                late.execute(
                    "INSERT INTO escrow_bookingstatuschange (booking_id, from_status, to_status, source, actor,"
                    " tx_hash, note, created_at) VALUES (%s, 'PENDING_PAYMENT', 'FAILED', 'admin', 'late', '', '',"
                    " now())",
                    [booking.pk],
                )
                late_id = late.execute("SELECT max(id) FROM notifications_notification").fetchone()[0]
                # B: a higher id, committed first.
                early = transition(booking, BookingStatus.EXPIRED, source="api", actor="early")
                early_note = Notification.objects.get(status_change=early)
                assert early_note.id > late_id
                assert relay.relay_once() == 1  # A is not committed: invisible, left for later
                late.commit()
            assert relay.relay_once() == 1
        finally:
            relay.loop.close()
            connection.close()
        return early_note, late_id

    async def relay_and_listen():  # one event loop: the layer subscribes per loop
        layer, staff_channel = await _subscribed_to_staff()
        relayed = await asyncio.to_thread(relay_three)
        return relayed, [await asyncio.wait_for(layer.receive(staff_channel), 10) for _ in range(3)]

    notifications_published.connect(receiver)
    try:
        (early_note, late_id), received = async_to_sync(relay_and_listen)()
    finally:
        notifications_published.disconnect(receiver)

    by_seq = list(Notification.objects.order_by("seq").values_list("seq", "id"))
    assert [row[0] for row in by_seq] == [1, 2, 3]  # gapless
    assert by_seq[1][1] == early_note.id and by_seq[2][1] == late_id  # commit order, not id order
    assert signalled == [[1], [2], [3]]
    assert Notification.objects.filter(published_at__isnull=True).count() == 0
    assert [m["event"]["seq"] for m in received] == [1, 2, 3]
    assert received[2]["event"]["to_status"] == "FAILED" and received[2]["type"] == "outbox.event"
