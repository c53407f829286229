"""Prometheus counters of reconciliation runs (per process; prometheus_client's default registry),
and the database-backed gauges of the operator accounts (`OperatorTransactionsCollector`,
registered once by ReconciliationConfig.ready()).

The database-backed gauges of the last run and of open flags are read at scrape time by the
console's collector (bookme/console_metrics.py).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

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


class OperatorTransactionsCollector:
    """Database-backed gauges of the operator accounts, computed when scraped (the same in
    every process that serves /metrics): per sending account, the nonce gap the settle job last
    found unfilled, and the transactions still unmined TX_STUCK_ALERT_SECONDS after they were sent."""

    def describe(self):
        # Lets the registry learn the names without querying the database at registration.
        return [
            GaugeMetricFamily("bookme_operator_nonce_gap", "", labels=["account"]),
            GaugeMetricFamily("bookme_operator_transactions_stuck", "", labels=["account"]),
        ]

    def collect(self):
        from django.conf import settings
        from django.db.models import Count
        from django.utils import timezone

        from .models import OperatorNonce, SentTransaction, TxStatus

        gap = GaugeMetricFamily(
            "bookme_operator_nonce_gap",
            "Nonces below the account's highest unmined transaction that neither the chain nor any transaction "
            "of ours holds, at the settle job's last check: later transactions wait behind them",
            labels=["account"],
        )
        stuck = GaugeMetricFamily(
            "bookme_operator_transactions_stuck",
            "Operator transactions sent over TX_STUCK_ALERT_SECONDS ago and not mined yet",
            labels=["account"],
        )
        try:
            accounts = {row.address: row.nonce_gap for row in OperatorNonce.objects.filter(chain_id=settings.CHAIN_ID)}
            sent_before = timezone.now() - timedelta(seconds=settings.TX_STUCK_ALERT_SECONDS)
            waiting = dict(
                SentTransaction.objects.filter(
                    chain_id=settings.CHAIN_ID, status=TxStatus.SUBMITTED, submitted_at__lt=sent_before
                ).values_list("from_address").annotate(n=Count("id"))
            )
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("operator transaction metrics unavailable: %s", exc)
            return []
        for address in sorted(accounts.keys() | waiting.keys()):
            gap.add_metric([address], accounts.get(address, 0))
            stuck.add_metric([address], waiting.get(address, 0))
        return [gap, stuck]


class LedgerCollector:
    """Gauges of the last finished ledger check (reconciliation.ledger), read from its stored
    report when scraped: the check runs in the worker, /metrics is served by any process."""

    def describe(self):
        return [
            GaugeMetricFamily("bookme_ledger_ok", ""),
            GaugeMetricFamily("bookme_ledger_mismatches", "", labels=["kind"]),
            GaugeMetricFamily("bookme_ledger_checked_block", ""),
            GaugeMetricFamily("bookme_ledger_last_run_timestamp_seconds", ""),
        ]

    def collect(self):
        from .ledger import MISMATCH_KINDS, last_ledger_report

        ok = GaugeMetricFamily(
            "bookme_ledger_ok", "1 when the last ledger check found the ledger equal to the chain, 0 otherwise "
            "(a difference, or the check could not finish)",
        )
        mismatches = GaugeMetricFamily(
            "bookme_ledger_mismatches", "Differences the last ledger check found, by kind", labels=["kind"]
        )
        block = GaugeMetricFamily("bookme_ledger_checked_block", "The block the last ledger check was pinned at")
        last_run = GaugeMetricFamily(
            "bookme_ledger_last_run_timestamp_seconds", "Unix time the last ledger check finished"
        )
        try:
            report = last_ledger_report()
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("ledger metrics unavailable: %s", exc)
            return []
        if report is not None:
            ok.add_metric([], 1 if report.ok else 0)
            counts = dict.fromkeys(MISMATCH_KINDS, 0)
            for mismatch in report.mismatches:
                counts[mismatch["kind"]] = counts.get(mismatch["kind"], 0) + 1
            for kind, count in counts.items():
                mismatches.add_metric([kind], count)
            if report.chain_block is not None:
                block.add_metric([], report.chain_block)
            last_run.add_metric([], report.finished_at.timestamp())
        return [ok, mismatches, block, last_run]


_registered = False


def register_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(OperatorTransactionsCollector())
        REGISTRY.register(LedgerCollector())
        _registered = True
