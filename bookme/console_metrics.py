"""The operators' console as Prometheus gauges: what the console index shows, read from the
database (and the contract's cached paused()) when /metrics is scraped, so every process that
serves /metrics reports the same numbers. Registered once by bookme.apps.ConsoleAdminConfig.ready().
"""
from __future__ import annotations

import logging

from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from chain_events.models import ChainEvent, EventStatus, SyncCursor
from escrow.selectors import stuck_bookings
from reconciliation.metrics import LAST_REPORT_KINDS
from reconciliation.selectors import last_finished_report, open_flags_by_kind

from .health import cached_chain_components

log = logging.getLogger(__name__)


class ConsoleStateCollector:
    """Database-backed gauges of what the operators' console shows, computed when scraped:
    open dead letters, open reconciliation flags, the last reconciliation run, stuck bookings,
    the age of the last scan, and whether the contract is paused (its paused() view, cached)."""

    def describe(self):
        # Lets the registry learn the names without querying the database at registration.
        return [
            GaugeMetricFamily("bookme_chain_dead_letters_open", ""),
            GaugeMetricFamily("bookme_chain_last_scan_age_seconds", "", labels=["chain", "contract"]),
            GaugeMetricFamily("bookme_reconciliation_flags_open", "", labels=["kind"]),
            GaugeMetricFamily("bookme_reconciliation_last_run_mismatches", "", labels=["kind"]),
            GaugeMetricFamily("bookme_reconciliation_last_run_timestamp_seconds", ""),
            GaugeMetricFamily("bookme_reconciliation_last_run_failed", ""),
            GaugeMetricFamily("bookme_bookings_stuck", ""),
            GaugeMetricFamily("bookme_contract_paused", ""),
        ]

    def collect(self):
        dead = GaugeMetricFamily("bookme_chain_dead_letters_open", "Dead-lettered events not resolved by staff")
        scan_age = GaugeMetricFamily(
            "bookme_chain_last_scan_age_seconds", "Seconds since the scanner last finished a scan",
            labels=["chain", "contract"],
        )
        flags = GaugeMetricFamily(
            "bookme_reconciliation_flags_open", "Open reconciliation flags, by kind", labels=["kind"]
        )
        last_run = GaugeMetricFamily(
            "bookme_reconciliation_last_run_mismatches", "Differences found by the last finished reconciliation run",
            labels=["kind"],
        )
        last_run_at = GaugeMetricFamily(
            "bookme_reconciliation_last_run_timestamp_seconds", "Unix time the last reconciliation run finished"
        )
        last_run_failed = GaugeMetricFamily(
            "bookme_reconciliation_last_run_failed", "1 when the last run stopped on an error"
        )
        stuck = GaugeMetricFamily(
            "bookme_bookings_stuck", "Bookings stuck over an hour (escrow.selectors.stuck_bookings)"
        )
        paused = GaugeMetricFamily(
            "bookme_contract_paused", "1 while the escrow contract's paused() is true (absent when it cannot be read)"
        )
        try:
            now = timezone.now()
            dead_letters = ChainEvent.objects.filter(status=EventStatus.DEAD_LETTER, resolved_at__isnull=True)
            dead.add_metric([], dead_letters.count())
            for cursor in SyncCursor.objects.all():
                if cursor.last_scan_at is not None:
                    scan_age.add_metric(
                        [str(cursor.chain_id), cursor.contract_address], (now - cursor.last_scan_at).total_seconds()
                    )
            for kind, count in open_flags_by_kind().items():
                flags.add_metric([kind], count)
            report = last_finished_report()
            if report is not None:
                for kind in LAST_REPORT_KINDS:
                    last_run.add_metric([kind], getattr(report, kind))
                last_run_at.add_metric([], report.finished_at.timestamp())
                last_run_failed.add_metric([], 1 if report.status == "FAILED" else 0)
            stuck.add_metric([], stuck_bookings(now=now).count())
            # As the worker's health check last read it: a scrape of the web process never asks the node.
            contract = cached_chain_components()["contract"]
            if "paused" in contract:
                paused.add_metric([], 1 if contract["paused"] else 0)
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("console metrics unavailable: %s", exc)
            return []
        return [dead, scan_age, flags, last_run, last_run_at, last_run_failed, stuck, paused]


_registered = False


def register_console_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(ConsoleStateCollector())
        _registered = True
