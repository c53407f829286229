"""Prometheus metrics of the chain sync (prometheus_client, default registry).

Counters and histograms are per process (web, each worker). What is a property of the
database rather than of a process (lag, dead letters and orphans waiting) is read at scrape
time by `SyncStateCollector`, registered once by ChainEventsConfig.ready(), so any process
that serves /metrics reports the same numbers.
"""
from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

EVENTS_PROCESSED = Counter(
    "bookme_chain_events_total",
    "Chain events handled, by event type and outcome (processed, duplicate, orphan, failed, dead_letter, removed)",
    ["event", "outcome"],
)
APPLY_SECONDS = Histogram(
    "bookme_chain_apply_seconds",
    "Time to apply one batch of events to bookings (a scanned range, a receipt, a retry)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RANGE_SECONDS = Histogram(
    "bookme_chain_range_seconds",
    "Time to fetch, store and apply one scanned block range, commit included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECEIPT_SECONDS = Histogram(
    "bookme_chain_receipt_ingest_seconds",
    "Fast path: receipt fetched, events stored and applied",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SYNC_LAG = Gauge("bookme_chain_sync_lag_blocks", "Blocks between the node's head and the scanner cursor (this process)")
HEAD_BLOCK = Gauge("bookme_chain_head_block", "Head block number seen by the scanner (this process)")
CURSOR_BLOCK = Gauge("bookme_chain_cursor_block", "Last fully scanned block (this process)")
REORGS = Counter("bookme_chain_reorgs_total", "Reorgs detected and rolled back")
REORG_DEPTH = Histogram(
    "bookme_chain_reorg_depth_blocks", "Depth of rolled back reorgs", buckets=(1, 2, 3, 5, 10, 20, 50, 100, 500)
)
DEEP_REORGS = Counter("bookme_chain_deep_reorgs_total", "Reorgs deeper than the unfinalized window (scanner halted)")
DEAD_LETTERS = Counter("bookme_chain_dead_letters_total", "Events moved to DEAD_LETTER", ["event"])
ORPHANS = Counter("bookme_chain_orphans_total", "Chain booking ids found that the database does not know")
RANGE_SHRINKS = Counter(
    "bookme_chain_log_range_shrinks_total", "eth_getLogs ranges shrunk after a refusal or too many results"
)
UNDECODABLE_LOGS = Counter(
    "bookme_chain_undecodable_logs_total", "Logs with a booking event topic of our contract that do not fit the ABI"
)
SCAN_FAILURES = Counter("bookme_chain_scan_failures_total", "Scan passes that ended with an error", ["error"])
SCANS_SKIPPED = Counter("bookme_chain_scans_skipped_total", "Scan runs that found another scan holding the lock")


class SyncStateCollector:
    """Database-backed gauges, computed when scraped."""

    def describe(self):
        # Lets the registry learn the names without querying the database at registration.
        return [
            GaugeMetricFamily("bookme_chain_cursor_lag_blocks", "", labels=["chain", "contract"]),
            GaugeMetricFamily("bookme_chain_scanner_halted", "", labels=["chain", "contract"]),
            GaugeMetricFamily("bookme_chain_events_waiting", "", labels=["status"]),
            GaugeMetricFamily("bookme_chain_orphans_open", ""),
        ]

    def collect(self):
        from django.db.models import Count

        lag = GaugeMetricFamily(
            "bookme_chain_cursor_lag_blocks", "Head minus cursor at the last scan", labels=["chain", "contract"]
        )
        halted = GaugeMetricFamily(
            "bookme_chain_scanner_halted", "1 when a deep reorg halted the scanner", labels=["chain", "contract"]
        )
        waiting = GaugeMetricFamily("bookme_chain_events_waiting", "Events not settled, by status", labels=["status"])
        orphans = GaugeMetricFamily("bookme_chain_orphans_open", "Orphans waiting for staff or reconciliation")
        try:
            from .models import ChainEvent, Orphan, OrphanStatus, SyncCursor

            for cursor in SyncCursor.objects.all():
                labels = [str(cursor.chain_id), cursor.contract_address]
                lag.add_metric(labels, cursor.lag_blocks or 0)
                halted.add_metric(labels, 1 if cursor.halted else 0)
            rows = (
                ChainEvent.objects.filter(status__in=["PENDING", "FAILED", "RETRY", "DEAD_LETTER"])
                .values("status")
                .annotate(n=Count("id"))
            )
            for row in rows:
                waiting.add_metric([row["status"]], row["n"])
            orphans.add_metric([], Orphan.objects.filter(status=OrphanStatus.OPEN).count())
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("chain sync metrics unavailable: %s", exc)
            return []
        return [lag, halted, waiting, orphans]


_registered = False


def register_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(SyncStateCollector())
        _registered = True
