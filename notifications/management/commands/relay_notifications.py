"""Run the outbox relay in the foreground (Procfile `relay:`) until SIGTERM or Ctrl-C.

    python manage.py relay_notifications
"""
from __future__ import annotations

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from notifications import relay

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Number committed notifications and publish them to the WebSocket stream and webhooks (one instance)."

    def handle(self, *args, **options):
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if settings.RELAY_METRICS_PORT:
            from prometheus_client import start_http_server

            try:
                start_http_server(settings.RELAY_METRICS_PORT, addr="127.0.0.1")
            except OSError as exc:
                log.warning("relay metrics not served on 127.0.0.1:%s: %s", settings.RELAY_METRICS_PORT, exc)
        relay.serve(stop)
