"""Reads of the operations floor that the console index, /api/health/ and /metrics show: whether
the contract is paused (cached), the pause records, open reconciliation flags, the last run.

Reads only: the actions that change these are in reconciliation.operations.
"""
from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count

from .chain_reads import read_contract_paused
from .models import EmergencyPause, PauseAction, ReconciliationFlag, ReconciliationReport

PAUSED_CACHE_KEY = "reconciliation:contract-paused"


def contract_paused() -> bool:
    """The contract's paused() view, cached CONTRACT_PAUSED_CACHE_SECONDS (every console page,
    health probe and scrape would read it otherwise). RpcError if unreachable."""
    cached = cache.get(PAUSED_CACHE_KEY)
    if cached is not None:
        return cached
    paused = read_contract_paused()
    cache.set(PAUSED_CACHE_KEY, paused, timeout=settings.CONTRACT_PAUSED_CACHE_SECONDS)
    return paused


def forget_contract_paused() -> None:
    """Drop the cached paused() answer (a pause or unpause was just sent)."""
    cache.delete(PAUSED_CACHE_KEY)


def last_pause_sent() -> EmergencyPause | None:
    """The newest pause this backend sent (succeeded or not): who paused, and why."""
    return EmergencyPause.objects.filter(action=PauseAction.PAUSE).first()


def last_effective_pause_record() -> EmergencyPause | None:
    """The newest pause or unpause that went through on chain."""
    return EmergencyPause.objects.filter(succeeded=True).first()


def open_flags() -> int:
    """How many reconciliation flags wait for staff."""
    return ReconciliationFlag.objects.filter(resolved_at__isnull=True).count()


def open_flags_by_kind() -> dict[str, int]:
    rows = ReconciliationFlag.objects.filter(resolved_at__isnull=True).values("kind").annotate(n=Count("id"))
    return {row["kind"]: row["n"] for row in rows}


def last_report() -> ReconciliationReport | None:
    """The newest reconciliation run, finished or still going."""
    return ReconciliationReport.objects.first()


def last_finished_report() -> ReconciliationReport | None:
    return ReconciliationReport.objects.filter(finished_at__isnull=False).order_by("-finished_at").first()
