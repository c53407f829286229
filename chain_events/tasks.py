"""Celery entry points of the chain sync: thin callers of chain_events.scanner and chain_events.ingest.

Both are safe under duplicate delivery (acks_late may deliver a task twice): the scan holds a
single-flight advisory lock and stores each log once; the retry claims rows SKIP LOCKED.
An unreachable chain is logged, not raised: the next beat tries again.
"""
from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from . import ingest, scanner
from .rpc import RpcError

log = logging.getLogger(__name__)


@shared_task(name="chain_events.scan_chain", acks_late=True, ignore_result=True)
def scan_chain() -> dict:
    try:
        # Waiting one beat interval for the lock hands the head over from one following scan to
        # the next without a gap; a duplicate delivery waits, then finds nothing left to do.
        report = scanner.scan_chain(
            max_seconds=settings.CHAIN_SCAN_MAX_SECONDS,
            follow_seconds=settings.CHAIN_SCAN_FOLLOW_SECONDS,
            lock_wait_seconds=settings.SCAN_INTERVAL_SECONDS,
        )
    except RpcError as exc:
        log.warning("chain scan stopped: RPC unavailable: %s", exc)
        return {"error": str(exc)[:300]}
    return report.as_dict()


@shared_task(name="chain_events.retry_failed_events", acks_late=True, ignore_result=True)
def retry_failed_events() -> dict:
    report = ingest.retry_failed_events()
    return {"attempted": report.attempted, "processed": report.processed, "failed": report.failed,
            "dead_letters": report.dead_letters}
