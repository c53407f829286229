"""Fan-out: the outbox's published notifications become deliveries to the active endpoints
that want their kind, each notification exactly once.

The cursor (FanOutCursor.last_seq) follows Notification.seq, which the relay gives committed rows
in commit order (notifications.relay), so "seq above the cursor" never skips a row. Creating a
batch's deliveries and moving the cursor past it is one transaction under the cursor's row lock:
two fan-outs at once take turns, and the second finds the first's rows behind the cursor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from notifications.models import Notification

from .models import FanOutCursor, WebhookDelivery, WebhookEndpoint

BATCH_SIZE = 1000
# Set while a fan-out task waits in the queue: it will fan out everything published before it
# starts, so a burst of relay batches queues one task, not one each (each would hold a worker
# thread waiting on the cursor's lock). A flag in the cache, not a lock: if it outlives its task
# (lost, purged), publishes queue nothing until it expires, and the beat's sweep fans out meanwhile.
QUEUED_FLAG = "webhooks:fan-out-queued"
QUEUED_FLAG_SECONDS = 10


@dataclass
class FanOutResult:
    notifications: int = 0
    deliveries: int = 0
    last_seq: int = 0
    # (endpoint id, booking id) of the deliveries created: their oldest PENDING one is sent next.
    pairs: set[tuple[int, int]] = field(default_factory=set)
    delivery_ids: set[int] = field(default_factory=set)


def mark_queued() -> bool:
    """True when no fan-out was waiting in the queue: the caller queues one now."""
    return cache.add(QUEUED_FLAG, True, QUEUED_FLAG_SECONDS)


def unmark_queued() -> None:
    """A fan-out starts (or was not queued after all): the next publish queues another."""
    cache.delete(QUEUED_FLAG)


def fan_out(*, batch_size: int = BATCH_SIZE) -> FanOutResult:
    """Fan out every published notification past the cursor, a batch per transaction."""
    result = FanOutResult()
    while True:
        batch = _fan_out_batch(batch_size, result)
        if batch < batch_size:
            return result


def _fan_out_batch(batch_size: int, result: FanOutResult) -> int:
    FanOutCursor.objects.get_or_create(pk=1)
    with transaction.atomic():
        cursor = FanOutCursor.objects.select_for_update().get(pk=1)
        result.last_seq = cursor.last_seq
        notifications = list(
            Notification.objects.filter(seq__gt=cursor.last_seq)
            .order_by("seq")
            .only("id", "seq", "kind", "booking_id")[:batch_size]
        )
        if not notifications:
            return 0
        endpoints = list(WebhookEndpoint.objects.filter(active=True))
        deliveries = [
            WebhookDelivery(
                endpoint=endpoint, notification_id=n.id, booking_id=n.booking_id, seq=n.seq,
                attempt_limit=settings.WEBHOOK_MAX_ATTEMPTS,
            )
            for n in notifications
            for endpoint in endpoints
            if endpoint.wants(n.kind)
        ]
        WebhookDelivery.objects.bulk_create(deliveries, batch_size=500)
        cursor.last_seq = notifications[-1].seq
        cursor.save(update_fields=["last_seq", "updated_at"])
    result.notifications += len(notifications)
    result.deliveries += len(deliveries)
    result.last_seq = cursor.last_seq
    result.pairs.update((d.endpoint_id, d.booking_id) for d in deliveries)
    result.delivery_ids.update(d.pk for d in deliveries)
    return len(notifications)
