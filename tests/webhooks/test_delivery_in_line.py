"""What keeps a busy booking's webhooks flowing without a task per event: the deliver task goes on
with the next delivery of the same booking and endpoint in the same run (in order, a retry naming
the delivery that failed), hands the pair back to the queue after IN_LINE_PER_TASK, and a burst
of relay batches queues one fan-out, not one each. Real receiver, PostgreSQL and Redis broker."""
from __future__ import annotations

import pytest
import redis
from django.conf import settings

from bookme.celery import app
from webhooks import delivery, fanout, tasks
from webhooks.models import WebhookDelivery

from .conftest import add_endpoint, move, new_booking, publish

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker():
    """The Celery queue in this test's Redis DB, emptied before and after (the fan-out flag too)."""
    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    app.control.purge()
    fanout.unmark_queued()
    yield queue
    app.control.purge()
    fanout.unmark_queued()


def test_the_next_in_line_is_sent_by_the_same_task_in_order(webhook_settings, receiver, broker, monkeypatch):
    add_endpoint(receiver)
    booking, other = new_booking("in-line"), new_booking("in-line-other")
    move(booking, "EXPIRED", "PENDING_PAYMENT", "PAID")
    publish()
    fanout.fan_out()
    app.control.purge()  # the fan-out the relay's signal queued: not needed here
    first, second, *_ = WebhookDelivery.objects.filter(booking=booking).order_by("seq")
    # The second event's first request fails, and its retry is due at once (eager: Celery runs it
    # at once too): the retry must name the second delivery, not the task's first one.
    receiver.answer = lambda number, event: "fail" if number == 1 else "ok"
    monkeypatch.setattr(delivery, "backoff_seconds", lambda failed_attempts: 0.0)

    assert tasks.deliver.apply(args=(first.pk,)).get() == "delivered"

    pending_order = list(WebhookDelivery.objects.filter(booking=booking).order_by("seq").values_list("seq", flat=True))
    assert receiver.order[str(booking.uuid)] == pending_order  # all four, in order
    assert [r["id"] for r in receiver.requests][:3] == [first.event_id, second.event_id, second.event_id]
    assert list(WebhookDelivery.objects.filter(booking=booking).order_by("seq").values_list("status", "attempts")) \
        == [("DELIVERED", 1), ("DELIVERED", 2), ("DELIVERED", 1), ("DELIVERED", 1)]
    assert broker.llen("celery") == 0  # no task queued for the next in line, nor at the end (nothing left)
    assert WebhookDelivery.objects.get(booking=other).status == "PENDING"  # another pair: its own task


def test_a_task_hands_the_pair_back_after_its_share(webhook_settings, receiver, broker, monkeypatch):
    monkeypatch.setattr(tasks, "IN_LINE_PER_TASK", 2)
    add_endpoint(receiver)
    booking = new_booking("share")
    move(booking, "EXPIRED", "PENDING_PAYMENT")
    publish()
    fanout.fan_out()
    app.control.purge()
    first, second, third = WebhookDelivery.objects.order_by("seq")
    assert tasks.deliver.apply(args=(first.pk,)).get() == "delivered"
    assert [r["id"] for r in receiver.requests] == [first.event_id, second.event_id]
    assert broker.llen("celery") == 1 and delivery.heads() == [third.pk]  # the third goes back to the queue


def test_a_burst_of_published_batches_queues_one_fan_out(webhook_settings, receiver, broker):
    add_endpoint(receiver)
    booking = new_booking("burst")
    for status in ("EXPIRED", "PENDING_PAYMENT", "EXPIRED"):
        move(booking, status)
        assert publish() >= 1  # a batch, its signal, its on_commit: a fan-out queued or already waiting
    assert broker.llen("celery") == 1
    tasks.fan_out.apply()  # the waiting one runs: it covers all four, and the next publish queues again
    assert WebhookDelivery.objects.count() == 4
    move(booking, "PENDING_PAYMENT")
    publish()
    assert broker.llen("celery") == 3  # the second fan-out and the first delivery the first queued
