"""Prometheus metrics of the outbox relay and the live stream (prometheus_client, default registry).

The relay's counters live in the relay process (served on RELAY_METRICS_PORT); the stream's in
each ASGI process (its /metrics). The backlog is a property of the database, read at scrape time
by `OutboxCollector`, so every process that serves /metrics reports the same number.
"""
from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

PUBLISHED = Counter("bookme_notifications_published_total", "Notifications numbered and published by the relay")
PUBLISH_FAILURES = Counter(
    "bookme_notifications_publish_failures_total",
    "Relay batches whose push to the channel layer failed (clients get them from the outbox at the next heartbeat)",
)
RELAY_LAG = Histogram(
    "bookme_notifications_relay_lag_seconds",
    "From the status change's write to its publication by the relay",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STREAM_CONNECTIONS = Gauge("bookme_stream_connections", "Open WebSocket connections on /ws/bookings/ (this process)")
STREAM_EVENTS_SENT = Counter(
    "bookme_stream_events_sent_total", "Event frames sent to WebSocket clients, by path", ["path"]
)


class OutboxCollector:
    """Notifications committed but not yet numbered and published, computed when scraped."""

    def describe(self):
        return [GaugeMetricFamily("bookme_notifications_unpublished", "")]

    def collect(self):
        backlog = GaugeMetricFamily("bookme_notifications_unpublished", "Notifications the relay has not published")
        try:
            from .models import Notification

            backlog.add_metric([], Notification.objects.filter(seq__isnull=True).count())
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("outbox metrics unavailable: %s", exc)
            return []
        return [backlog]


_registered = False


def register_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(OutboxCollector())
        _registered = True
