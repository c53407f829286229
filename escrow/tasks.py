"""Celery entry points of the escrow app (scheduled in CELERY_BEAT_SCHEDULE, bookme/settings.py).

Thin callers of escrow.retention, single-flight (common.singleflight): beat firing again while
a long first purge is still going, or acks_late delivering the task twice, skips the second run.
"""
from __future__ import annotations

from celery import shared_task

from common.singleflight import single_flight

from . import retention


@shared_task(name="escrow.purge_expired_records", acks_late=True, ignore_result=True)
def purge_expired_records() -> dict:
    with single_flight("escrow:task:purge-expired-records") as acquired:
        if not acquired:
            return {"skipped": True}
        return retention.purge_expired_records()
