"""Celery entry points of reconciliation (scheduled in CELERY_BEAT_SCHEDULE, bookme/settings.py).

Thin callers of reconciliation.services. Each runs single-flight (a Redis key set with NX for
at most the task's expected duration): beat firing again while a slow run is still going,
or acks_late delivering a task twice, does not start a second run. A run that fails on the RPC
is logged and reported, not raised: the next beat tries again.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from chain_events.rpc import RpcError

from . import services, transactions

log = logging.getLogger(__name__)


@contextmanager
def single_flight(name: str, timeout: float):
    key = f"reconciliation:task-lock:{name}"
    acquired = cache.add(key, "1", timeout=int(timeout) + 1)
    try:
        yield acquired
    finally:
        if acquired:
            cache.delete(key)


def _reported_if_rpc_fails(action, what: str) -> dict:
    """`action()`; an RPC failure is logged and returned as {"error": ...}: the next beat tries again."""
    try:
        return action()
    except RpcError as exc:
        log.warning("%s stopped: RPC unavailable: %s", what, exc)
        return {"error": str(exc)[:300]}


@shared_task(name="reconciliation.reconcile_bookings", acks_late=True, ignore_result=True)
def reconcile_bookings() -> dict:
    with single_flight("reconcile", settings.RECONCILE_INTERVAL_SECONDS * 5) as acquired:
        if not acquired:
            return {"skipped": True}
        report = services.reconcile_bookings(trigger="beat")
    return {"report": report.pk, "status": report.status, "checked": report.checked, "repaired": report.repaired,
            "flagged": report.flagged, "errors": report.errors}


@shared_task(name="reconciliation.auto_complete_bookings", acks_late=True, ignore_result=True)
def auto_complete_bookings() -> dict:
    with single_flight("auto-complete", settings.TX_RECEIPT_TIMEOUT_SECONDS * 2) as acquired:
        if not acquired:
            return {"skipped": True}
        return _reported_if_rpc_fails(services.auto_complete_bookings, "auto-complete")


@shared_task(name="reconciliation.auto_refund_orphans", acks_late=True, ignore_result=True)
def auto_refund_orphans() -> dict:
    with single_flight("orphan-refund", settings.TX_RECEIPT_TIMEOUT_SECONDS * 2) as acquired:
        if not acquired:
            return {"skipped": True}
        return services.auto_refund_orphans()


@shared_task(name="reconciliation.settle_stale_transactions", acks_late=True, ignore_result=True)
def settle_stale_transactions() -> dict:
    with single_flight("settle-transactions", 300) as acquired:
        if not acquired:
            return {"skipped": True}
        return _reported_if_rpc_fails(transactions.settle_stale_transactions, "settling operator transactions")
