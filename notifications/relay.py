"""The outbox relay: numbers committed notifications, then pushes them to the channel layer and
tells the floors above (notifications_published). One process (Procfile `relay:`, manage.py
relay_notifications); a second one stands by until the first one's advisory lock is freed.

It wakes on the trigger's pg_notify('bookme_outbox') and polls every RELAY_POLL_SECONDS as well
(a NOTIFY sent while the listener was reconnecting is not replayed by PostgreSQL). Numbering
commits before anything is pushed: a push that fails loses nothing, because clients read the
outbox at subscribe and at every heartbeat, and webhooks keep their own cursor over seq.
"""
from __future__ import annotations

import asyncio
import logging
import threading

import psycopg
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone

from common.singleflight import single_flight

from . import outbox
from .metrics import PUBLISH_FAILURES, PUBLISHED, RELAY_LAG
from .models import Notification
from .signals import notifications_published

log = logging.getLogger(__name__)

CHANNEL = "bookme_outbox"
RELAY_LOCK = "notifications.relay"
STANDBY_RETRY_SECONDS = 5.0


def serve(stop: threading.Event) -> None:
    """Run the relay until `stop` is set: publish while holding the relay lock, stand by otherwise."""
    announced = False
    while not stop.is_set():
        with single_flight(RELAY_LOCK) as held:
            if held:
                log.info("outbox relay: publishing (lock %s held)", RELAY_LOCK)
                Relay().run(stop)
                return
        if not announced:
            log.info("outbox relay: another relay holds %s; standing by", RELAY_LOCK)
            announced = True
        stop.wait(STANDBY_RETRY_SECONDS)


class Relay:
    def __init__(self, *, batch_size: int | None = None, poll_seconds: float | None = None):
        self.batch_size = batch_size or settings.RELAY_BATCH_SIZE
        self.poll_seconds = poll_seconds or settings.RELAY_POLL_SECONDS
        # One event loop for the process: channels_redis keeps its connection pool per loop.
        self.loop = asyncio.new_event_loop()
        self.layer = get_channel_layer()
        self.listener: psycopg.Connection | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self._listen()
                    while self.relay_once() == self.batch_size and not stop.is_set():
                        pass  # more are waiting
                    self._wait()
                except (DatabaseError, psycopg.OperationalError) as exc:
                    log.warning("outbox relay: database unavailable (%s); retrying", exc)
                    self._drop_listener()
                    close_old_connections()
                    connections["default"].close()
                    stop.wait(self.poll_seconds)
        finally:
            self._drop_listener()
            self.loop.close()

    def relay_once(self) -> int:
        """Number and publish one batch; return how many notifications it held."""
        batch = outbox.number_pending(self.batch_size)
        if not batch:
            return 0
        try:
            self.loop.run_until_complete(self._push(batch))
        except Exception as exc:  # Redis away: numbered anyway, clients catch up from the outbox
            PUBLISH_FAILURES.inc()
            log.warning("outbox relay: push of seq %s..%s failed: %s", batch[0].seq, batch[-1].seq, exc)
        now = timezone.now()
        for notification in batch:
            RELAY_LAG.observe(max(0.0, (now - notification.created_at).total_seconds()))
        PUBLISHED.inc(len(batch))
        for _receiver, result in notifications_published.send_robust(
            sender=Notification, seqs=[n.seq for n in batch]
        ):
            if isinstance(result, Exception):
                log.error("outbox relay: a notifications_published receiver failed: %r", result)
        return len(batch)

    async def _push(self, batch: list[Notification]) -> None:
        # One at a time, in seq order: each socket's channel receives them in that order. With the
        # pub/sub layer a group_send is one PUBLISH.
        for notification in batch:
            message = outbox.layer_message(notification)
            for group in outbox.groups_of(notification):
                await self.layer.group_send(group, message)

    # -- waking up ---------------------------------------------------------------------------------
    def _listen(self) -> None:
        if self.listener is not None and not self.listener.closed:
            return
        params = connections["default"].settings_dict
        self.listener = psycopg.connect(
            dbname=params["NAME"], user=params.get("USER") or None, password=params.get("PASSWORD") or None,
            host=params.get("HOST") or None, port=params.get("PORT") or None, autocommit=True,
            application_name="bookme-outbox-relay", connect_timeout=10,
        )
        self.listener.execute(f"LISTEN {CHANNEL}")

    def _wait(self) -> None:
        """Until a NOTIFY arrives or poll_seconds pass; notifies already queued are taken too."""
        for _ in self.listener.notifies(timeout=self.poll_seconds, stop_after=1):
            pass

    def _drop_listener(self) -> None:
        if self.listener is not None:
            try:
                self.listener.close()
            finally:
                self.listener = None
