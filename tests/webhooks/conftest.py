"""Webhook fixtures: a real HTTP receiver on a loopback port that verifies signatures and dedups
by event id (as docs/api.md tells receivers to), endpoints pointing at it, bookings whose status
changes the outbox records, and the relay's real numbering to publish them."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.utils import timezone

from escrow.models import Booking, StatusSource
from escrow.services import create_booking
from escrow.state import transition
from notifications.relay import Relay
from tests.console.conftest import clients, operator, reader  # noqa: F401 (the console's users, for its pages)
from tests.escrow.helpers import wallet
from webhooks.models import WebhookEndpoint

SIGNATURE_TOLERANCE_SECONDS = 300


class Receiver:
    """The marketplace application's side. `answer(request_number, event)` says what to do with a
    request: "ok" (200), "fail" (500, not processed), "redirect" (302 elsewhere, not processed) or
    "slow" (processed, then answers after the sender gave up: the sender retries an event the
    receiver already has)."""

    def __init__(self, secret: str = "", answer=None, slow_seconds: float = 1.0):
        self.secret = secret
        self.answer = answer or (lambda number, event: "ok")
        self.slow_seconds = slow_seconds
        self.handling_seconds = 0.01
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every request that reached us, in arrival order
        self.processed: dict[str, dict] = {}  # event id -> the event, first time seen (dedup)
        self.duplicates = 0
        self.bad_signatures = 0
        self.order: dict[str, list[int]] = defaultdict(list)  # booking -> seqs, in the order processed
        self.in_flight: dict[str, int] = defaultdict(int)
        self.overlaps = 0  # the same event id received while a request for it was being handled
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/bookme?x=1"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verify(self, headers, body: bytes) -> bool:
        fields = dict(part.split("=", 1) for part in headers.get("BookMe-Signature", "").split(",") if "=" in part)
        if "t" not in fields or "v1" not in fields:
            return False
        expected = hmac.new(self.secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(fields["t"])) <= SIGNATURE_TOLERANCE_SECONDS
        return fresh and hmac.compare_digest(expected, fields["v1"])

    def _handle(self, handler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        event = json.loads(body)
        with self.lock:
            number = len(self.requests)
            valid = self.verify(handler.headers, body)
            self.requests.append({"id": event["id"], "header_id": handler.headers.get("BookMe-Event-Id"),
                                  "path": handler.path, "host": handler.headers.get("Host"), "valid": valid,
                                  "event": event})
            self.overlaps += self.in_flight[event["id"]] > 0
            self.in_flight[event["id"]] += 1
            if not valid:
                self.bad_signatures += 1
            what = self.answer(number, event) if valid else "fail"
            if what in ("ok", "slow"):
                if event["id"] in self.processed:
                    self.duplicates += 1
                else:
                    self.processed[event["id"]] = event
                    self.order[event["data"]["booking"]].append(event["data"]["seq"])
        time.sleep(self.handling_seconds)  # a sender running the same event meanwhile would overlap
        with self.lock:
            self.in_flight[event["id"]] -= 1
        if what == "slow":
            time.sleep(self.slow_seconds)
        try:
            if what == "redirect":
                handler.send_response(302)
                handler.send_header("Location", handler.path + "&followed")
            else:
                handler.send_response(200 if what in ("ok", "slow") else 500)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        except OSError:
            pass  # the sender timed out and closed the connection

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                receiver._handle(self)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def webhook_settings(settings):
    """Loopback http:// receivers allowed (the settings exist for local development and tests)."""
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.02
    settings.WEBHOOK_RETRY_MAX_SECONDS = 0.1
    return settings


@pytest.fixture
def receiver():
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


def add_endpoint(receiver: Receiver, **fields) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.create(url=fields.pop("url", receiver.url), **fields)
    receiver.secret = endpoint.secret
    return endpoint


def new_booking(label: str) -> Booking:
    return create_booking(
        customer=wallet(f"webhook-customer-{label}").address,
        provider=wallet("webhook-provider").address,
        amount="12.50",
        scheduled_at=timezone.now() + timedelta(days=3),
    )


def move(booking: Booking, *statuses: str) -> None:
    """Status changes as the chain would apply them (chain sources always apply), each committed."""
    for status in statuses:
        with transaction.atomic():
            locked = Booking.objects.select_for_update().get(pk=booking.pk)
            transition(locked, status, source=StatusSource.CHAIN, tx_hash="0x" + "ab" * 32)


def publish() -> int:
    """Number the committed notifications and send `notifications_published`: the relay's own step."""
    relay = Relay(batch_size=1000, poll_seconds=1.0)
    try:
        total = 0
        while (published := relay.relay_once()) > 0:
            total += published
        return total
    finally:
        relay.loop.close()
