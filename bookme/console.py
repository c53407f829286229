"""The operators' console index: what needs attention (admin index, health) and the admin
site itself. The building blocks every app's admin uses are in common.console."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from chain_events.models import ChainEvent, EventStatus, Orphan, OrphanStatus, SyncCursor
from common.console import is_operator
from escrow.models import Booking
from escrow.selectors import STUCK_AFTER, stuck_bookings
from reconciliation.disputes import unsettled_disputes
from reconciliation.ledger import last_ledger_report
from reconciliation.selectors import last_pause_sent, last_report, open_flags

from .health import cached_chain_components


# -- what needs attention (admin index, health, metrics) -----------------------------------------
@dataclass
class AttentionItem:
    label: str
    count: int | str
    url: str = ""
    severity: str = "ok"  # ok / warning / critical
    detail: str = ""


@dataclass
class Attention:
    items: list[AttentionItem] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return any(item.severity != "ok" for item in self.items)


def _changelist(name: str, query: str = "") -> str:
    try:
        return reverse(f"admin:{name}_changelist") + (f"?{query}" if query else "")
    except NoReverseMatch:
        return ""


def attention_summary(*, now=None) -> Attention:
    """Counts for the admin index: dead letters, open orphans, stuck bookings, flags, disputes, sync
    lag, pause, the last ledger check."""
    now = now or timezone.now()
    items = []
    dead = ChainEvent.objects.filter(status=EventStatus.DEAD_LETTER, resolved_at__isnull=True).count()
    items.append(AttentionItem(
        "Dead-lettered chain events", dead,
        _changelist("chain_events_chainevent", "status__exact=DEAD_LETTER&unresolved=1"),
        "critical" if dead else "ok",
    ))
    failing = ChainEvent.objects.filter(status__in=[EventStatus.FAILED, EventStatus.RETRY]).count()
    items.append(AttentionItem(
        "Chain events failing (retrying)", failing, _changelist("chain_events_chainevent", "status__exact=FAILED"),
        "warning" if failing else "ok",
    ))
    orphans = Orphan.objects.filter(status=OrphanStatus.OPEN).count()
    items.append(AttentionItem(
        "Open orphans (paid on chain, unknown here)", orphans,
        _changelist("chain_events_orphan", "status__exact=OPEN"), "critical" if orphans else "ok",
    ))
    stuck = stuck_bookings(now=now).count()
    items.append(AttentionItem(
        f"Bookings stuck over {int(STUCK_AFTER.total_seconds() // 3600)} h", stuck,
        _changelist("escrow_booking", "stuck=1h"), "warning" if stuck else "ok",
    ))
    flagged = Booking.objects.filter(needs_attention=True).count()
    items.append(AttentionItem(
        "Bookings needing attention", flagged, _changelist("escrow_booking", "needs_attention__exact=1"),
        "warning" if flagged else "ok",
    ))
    flags = open_flags()
    items.append(AttentionItem(
        "Open reconciliation flags", flags, _changelist("reconciliation_reconciliationflag", "open=1"),
        "warning" if flags else "ok",
    ))
    disputed = unsettled_disputes().count()
    items.append(AttentionItem(
        "Open disputes (not paid out yet)", disputed, _changelist("reconciliation_dispute", "open=1"),
        "warning" if disputed else "ok",
    ))
    cursors = list(SyncCursor.objects.all())
    if not cursors:
        items.append(AttentionItem("Sync lag", "no scan yet", _changelist("chain_events_synccursor"), "warning"))
    for cursor in cursors:
        lag = cursor.lag_blocks
        age = (now - cursor.last_scan_at).total_seconds() if cursor.last_scan_at else None
        severity = "ok"
        if cursor.halted:
            severity = "critical"
        elif lag is None or lag > 10 or age is None or age > 120:
            severity = "warning"
        if cursor.last_error and not cursor.halted:
            severity = "critical" if age is None or age > 120 else "warning"
        detail = "halted: " + cursor.halt_reason if cursor.halted else (
            f"last scan {int(age)} s ago" if age is not None else "never scanned")
        if cursor.last_error and not cursor.halted:
            detail += f"; the last pass failed: {cursor.last_error[:300]}"
        items.append(AttentionItem(
            f"Sync lag (chain {cursor.chain_id}), blocks", "?" if lag is None else lag,
            _changelist("chain_events_synccursor"), severity, detail,
        ))
    # The contract's own paused(), not our last pause record: the owner may unpause outside this
    # backend, and a pause whose receipt wait timed out still counts. Read as the worker last
    # left it with the health check's chain part (bookme.health): a page never asks the node.
    contract = cached_chain_components()["contract"]
    if "paused" not in contract:
        items.append(AttentionItem(
            "Contract paused", "unknown", _changelist("reconciliation_emergencypause"), "warning",
            f"paused() not known: {contract.get('error', '')}",
        ))
    elif contract["paused"]:
        last_pause = last_pause_sent()
        detail = "not paused by this backend" if last_pause is None else (
            f"last pause sent by {last_pause.actor} at {last_pause.created_at:%Y-%m-%d %H:%M}: {last_pause.reason}")
        items.append(AttentionItem(
            "Contract paused", "yes", _changelist("reconciliation_emergencypause"), "critical", detail,
        ))
    report = last_report()
    if report is not None:
        severity = "warning" if report.status == "FAILED" or report.errors else "ok"
        items.append(AttentionItem(
            "Last reconciliation", report.status, _changelist("reconciliation_reconciliationreport"), severity,
            f"{report.started_at:%Y-%m-%d %H:%M:%S}: {report.checked} checked, "
            f"{report.repaired} repaired, {report.flagged} flagged, {report.errors} errors",
        ))
    items.append(_ledger_line(now))
    return Attention(items)


def _ledger_line(now) -> AttentionItem:
    """The last ledger check (reconciliation.ledger): its block, OK or how many differences,
    linked to its report. A check older than three intervals is itself a warning."""
    report = last_ledger_report()
    if report is None:
        return AttentionItem("Ledger check", "never run", _changelist("reconciliation_ledgerreport"), "warning",
                             "beat runs it every LEDGER_CHECK_INTERVAL_SECONDS; or run manage.py check_ledger")
    try:
        url = reverse("admin:reconciliation_ledgerreport_change", args=[report.pk])
    except NoReverseMatch:
        url = ""
    age = (now - report.finished_at).total_seconds()
    detail = f"block {report.chain_block}, finished {report.finished_at:%Y-%m-%d %H:%M:%S}"
    if report.error:
        count, severity, detail = "not finished", "warning", f"{detail}: {report.error[:300]}"
    elif report.ok:
        count, severity = "OK", "ok"
    else:
        kinds = sorted({m["kind"] for m in report.mismatches})
        count, severity = f"{report.mismatch_count} mismatches", "critical"
        detail = f"{detail}: {', '.join(kinds)}"
    if age > 3 * settings.LEDGER_CHECK_INTERVAL_SECONDS and severity == "ok":
        severity, detail = "warning", f"{detail}; no check since ({int(age)} s): is the worker or beat down?"
    return AttentionItem("Ledger check", count, url, severity, detail)


class ConsoleAdminSite(admin.AdminSite):
    """The default admin site (still at /admin/), titled for operators, with an attention panel."""

    site_header = "BookMe operators' console"
    site_title = "BookMe console"
    index_title = "Operations"
    index_template = "admin/console_index.html"

    def index(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "is_operator": is_operator(request.user)}
        if request.user.is_active and request.user.is_staff:
            extra_context["attention"] = attention_summary()
        return super().index(request, extra_context)
