"""Prometheus metrics of webhook deliveries (prometheus_client, default registry).

Attempts and finished deliveries are counted where they happen (the worker's registry, served
on WORKER_METRICS_PORT). What is a property of the database (deliveries waiting, DEAD ones not
sent again) is read at scrape time by `DeliveryStateCollector`, registered once by
WebhooksConfig.ready(), so every process that serves /metrics reports the same numbers.
"""
from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "bookme_webhook_attempts_total",
    "Webhook POSTs attempted, by result (2xx, non_2xx, timeout, connection_error, refused)",
    ["result"],
)
ATTEMPT_SECONDS = Histogram(
    "bookme_webhook_attempt_seconds",
    "Duration of one webhook POST",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FINISHED = Counter(
    "bookme_webhook_deliveries_total",
    "Webhook deliveries finished, by outcome (DELIVERED, DEAD)",
    ["outcome"],
)


def record_attempt(*, status_code: int | None, error: str, refused: bool, duration_ms: int) -> None:
    if refused:
        result = "refused"
    elif status_code is not None:
        result = "2xx" if 200 <= status_code < 300 else "non_2xx"
    elif error.startswith("timed out"):
        result = "timeout"
    else:
        result = "connection_error"
    ATTEMPTS.labels(result).inc()
    ATTEMPT_SECONDS.observe(duration_ms / 1000)


def record_finished(outcome: str) -> None:
    FINISHED.labels(outcome).inc()


class DeliveryStateCollector:
    """Database-backed gauges, computed when scraped: deliveries PENDING and DEAD."""

    def describe(self):
        # Lets the registry learn the names without querying the database at registration.
        return [GaugeMetricFamily("bookme_webhook_deliveries_open", "", labels=["status"])]

    def collect(self):
        from django.db.models import Count

        gauge = GaugeMetricFamily(
            "bookme_webhook_deliveries_open",
            "Webhook deliveries not delivered: PENDING (being retried) and DEAD (given up, until an operator "
            "sends them again)",
            labels=["status"],
        )
        try:
            from .models import DeliveryStatus, WebhookDelivery

            counts = dict(
                WebhookDelivery.objects.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.DEAD])
                .values_list("status").annotate(n=Count("id"))
            )
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("webhook metrics unavailable: %s", exc)
            return []
        for status in (DeliveryStatus.PENDING, DeliveryStatus.DEAD):
            gauge.add_metric([status], counts.get(status, 0))
        return [gauge]


_registered = False


def register_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(DeliveryStateCollector())
        _registered = True
