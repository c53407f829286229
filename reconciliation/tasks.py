"""Celery entry points of reconciliation (scheduled in CELERY_BEAT_SCHEDULE, bookme/settings.py).

Thin callers of reconciliation.reconcile, reconciliation.operations and
reconciliation.transactions. Each runs single-flight (common.singleflight: a PostgreSQL advisory
lock): beat firing again while a slow run is still going, or acks_late delivering a task twice,
does not start a second run; the second one is skipped. No run waits for a transaction's
receipt while it holds its lock (auto-complete sends and returns; the settle job records
outcomes later). A run that fails on the RPC is logged and reported, not raised: the next beat
tries again.
"""
from __future__ import annotations

import logging

from celery import shared_task

from chain_events.rpc import RpcError
from common.singleflight import single_flight

from . import console_requests, ledger, operations, reconcile, transactions

log = logging.getLogger(__name__)


def lock_name(task: str) -> str:
    """The single-flight lock a periodic task of reconciliation runs under."""
    return f"reconciliation:task:{task}"


def _reported_if_rpc_fails(action, what: str) -> dict:
    """`action()`; an RPC failure is logged and returned as {"error": ...}: the next beat tries again."""
    try:
        return action()
    except RpcError as exc:
        log.warning("%s stopped: RPC unavailable: %s", what, exc)
        return {"error": str(exc)[:300]}


@shared_task(name="reconciliation.reconcile_bookings", acks_late=True, ignore_result=True)
def reconcile_bookings() -> dict:
    with single_flight(lock_name("reconcile")) as acquired:
        if not acquired:
            return {"skipped": True}
        report = reconcile.reconcile_bookings(trigger="beat")
    return {"report": report.pk, "status": report.status, "checked": report.checked, "repaired": report.repaired,
            "flagged": report.flagged, "errors": report.errors}


@shared_task(name="reconciliation.auto_complete_bookings", acks_late=True, ignore_result=True)
def auto_complete_bookings() -> dict:
    with single_flight(lock_name("auto-complete")) as acquired:
        if not acquired:
            return {"skipped": True}
        return _reported_if_rpc_fails(operations.auto_complete_bookings, "auto-complete")


@shared_task(name="reconciliation.auto_refund_orphans", acks_late=True, ignore_result=True)
def auto_refund_orphans() -> dict:
    with single_flight(lock_name("orphan-refund")) as acquired:
        if not acquired:
            return {"skipped": True}
        return operations.auto_refund_orphans()


@shared_task(name="reconciliation.settle_transactions", acks_late=True, ignore_result=True)
def settle_transactions() -> dict:
    """Its own lock: auto-complete and the settle job never wait for each other."""
    with single_flight(lock_name("settle-transactions")) as acquired:
        if not acquired:
            return {"skipped": True}
        return _reported_if_rpc_fails(transactions.settle_transactions, "settling operator transactions")


@shared_task(name="reconciliation.check_ledger", acks_late=True, ignore_result=True)
def check_ledger() -> dict:
    """The ledger at one pinned block (reconciliation.ledger); the report says what differs."""
    with single_flight(lock_name("ledger")) as acquired:
        if not acquired:
            return {"skipped": True}
        report = ledger.check_ledger(trigger="beat")
    return {"report": report.pk, "ok": report.ok, "chain_block": report.chain_block,
            "mismatches": report.mismatch_count, "error": report.error[:300]}


# -- operator transactions asked for in the console (reconciliation.console_requests) ---------------
# Queued by the console, sent here: only the worker holds the operator key. Not single-flight by
# task: the operations' own lock per booking/orphan keeps two requests from sending twice.
@shared_task(name="reconciliation.send_emergency_cancel", acks_late=True, ignore_result=True)
def send_emergency_cancel(booking_id: int, actor: str, reason: str) -> dict:
    return console_requests.emergency_cancel(booking_id, actor=actor, reason=reason)


@shared_task(name="reconciliation.send_orphan_refund", acks_late=True, ignore_result=True)
def send_orphan_refund(orphan_id: int, actor: str, reason: str) -> dict:
    return console_requests.refund_orphan(orphan_id, actor=actor, reason=reason)


@shared_task(name="reconciliation.send_pause", acks_late=True, ignore_result=True)
def send_pause(actor: str, reason: str) -> dict:
    return console_requests.pause(actor=actor, reason=reason)


@shared_task(name="reconciliation.send_operator_completion", acks_late=True, ignore_result=True)
def send_operator_completion(booking_id: int, actor: str, reason: str) -> dict:
    return console_requests.complete_for_provider(booking_id, actor=actor, reason=reason)


@shared_task(name="reconciliation.send_dispute_resolution", acks_late=True, ignore_result=True)
def send_dispute_resolution(dispute_id: int, actor: str, reason: str, parts: list[str]) -> dict:
    return console_requests.resolve_dispute(dispute_id, actor=actor, reason=reason, parts=parts)
