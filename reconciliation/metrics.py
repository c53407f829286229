"""Prometheus counters of reconciliation runs (per process; prometheus_client's default registry).

The database-backed gauges of the last run and of open flags are read at scrape time by the
console's collector (bookme/console_metrics.py).
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram

# The report counts exported as differences, by kind (ReconciliationReport field names).
LAST_REPORT_KINDS = ("repaired", "flagged", "errors", "expired", "cancellations_lapsed")

RECONCILIATION_MISMATCHES = Counter(
    "bookme_reconciliation_mismatches_total",
    "Differences between the database and the chain found by reconciliation, by kind",
    ["kind"],
)
RECONCILIATION_SECONDS = Histogram(
    "bookme_reconciliation_run_seconds",
    "Duration of one reconciliation run",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


def export_run(report) -> None:
    """Add a finished run's differences and duration to the counters."""
    for kind in LAST_REPORT_KINDS:
        count = getattr(report, kind)
        if count:
            RECONCILIATION_MISMATCHES.labels(kind).inc(count)
    RECONCILIATION_SECONDS.observe(report.duration_seconds)
