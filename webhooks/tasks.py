"""Celery entry points of the webhooks: thin callers of webhooks.fanout and webhooks.delivery.

Safe under duplicate delivery (acks_late may run a task twice, the sweep queues again what
looks lost): fan-out takes turns on the cursor's row lock, and a delivery is claimed
(webhooks.delivery) before it is sent, so a second copy of a task finds nothing to do.
"""
from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import delivery, fanout

# Deliveries one `deliver` task sends in a row, each the next of its pair once the one before
# finished (webhooks.delivery.attempt_in_line); then the pair goes back to the queue, behind the
# other pairs waiting for a worker thread.
IN_LINE_PER_TASK = 50


def queue_deliveries(delivery_ids) -> None:
    """Queue `deliver` for these deliveries once the caller's transaction commits."""
    ids = list(delivery_ids)
    if ids:
        transaction.on_commit(lambda: [deliver.delay(pk) for pk in ids])


def queue_fan_out() -> None:
    """Queue a fan-out, unless one is already waiting to start (webhooks.fanout.QUEUED_FLAG)."""
    if fanout.mark_queued():
        try:
            fan_out.delay()
        except Exception:
            fanout.unmark_queued()
            raise


@shared_task(name="webhooks.fan_out", acks_late=True, ignore_result=True)
def fan_out() -> dict:
    fanout.unmark_queued()  # before reading the outbox: what is published from now on queues another
    result = fanout.fan_out()
    queue_deliveries(_new_heads(result))
    return {"notifications": result.notifications, "deliveries": result.deliveries, "last_seq": result.last_seq}


@shared_task(name="webhooks.deliver", bind=True, acks_late=True, ignore_result=True, max_retries=None)
def deliver(self, delivery_id: int) -> str:
    outcome = delivery.attempt_in_line(delivery_id, limit=IN_LINE_PER_TASK)
    if outcome.retry_in is not None:
        # The database counts the attempts and says when to give up; Celery only waits.
        raise self.retry(args=(outcome.delivery_id,), countdown=outcome.retry_in)
    if outcome.finished:
        queue_deliveries(delivery.heads([outcome.pair]))  # the next delivery of this booking to this endpoint
    return outcome.result


@shared_task(name="webhooks.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict:
    """The beat's safety net: fan out what no signal did, and queue again the deliveries due
    WEBHOOK_REQUEUE_AFTER_SECONDS ago that nobody holds (their task was lost with a worker)."""
    result = fanout.fan_out()
    fresh = _new_heads(result)
    due_before = timezone.now() - timedelta(seconds=settings.WEBHOOK_REQUEUE_AFTER_SECONDS)
    overdue = delivery.heads(due_before=due_before, limit=1000)
    queue_deliveries(dict.fromkeys([*fresh, *overdue]))
    return {"notifications": result.notifications, "deliveries": result.deliveries, "requeued": len(overdue)}


def _new_heads(result: fanout.FanOutResult) -> list[int]:
    """The heads of the fanned-out pairs that this fan-out created: a pair whose head is older is
    already in someone's hands (a queued or retrying task, whose worker goes on to the next in
    line, or the sweep if that task was lost); queueing it again would only be skipped."""
    return [pk for pk in delivery.heads(result.pairs) if pk in result.delivery_ids]
