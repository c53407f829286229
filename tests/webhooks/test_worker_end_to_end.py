"""A real Celery worker delivers to a receiver that answers 500 to a fifth of the requests and
now and then answers only after the sender gave up (having processed the event): in the end
every event is delivered, every signature verifies, each booking's events arrive in order, the
receiver recognises the repeats by their event id, and every attempt is stored.

Nothing here calls the delivery code: this process plays the web process and the relay (status
changes committed, then `notifications_published`, whose receiver queues the fan-out); the
worker, a subprocess against this test's database and Redis, does the rest, retrying through
Celery. Each delivery task is also queued a second time, as a redelivered message would be:
the claim keeps two threads of the worker from sending one delivery at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from notifications.models import Notification
from webhooks import fanout
from webhooks.models import WebhookAttempt, WebhookDelivery
from webhooks.tasks import deliver

from .conftest import Receiver, add_endpoint, move, new_booking, publish

pytestmark = [pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).parent / "celery")
WITHIN_SECONDS = 60
BOOKINGS = 6
STEPS = ("PAID", "PENDING_COMPLETION", "COMPLETED")
TIMEOUT_SECONDS = 0.4


def flaky(number: int, event: dict) -> str:
    """A fifth of the requests get a 500; one in nine of the others is answered too late."""
    if number % 5 == 1:
        return "fail"
    return "slow" if number % 9 == 4 else "ok"


def _database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def worker(transactional_db, settings, tmp_path):
    from bookme.celery import app

    app.control.purge()  # nothing left in this Redis DB by an earlier run
    fanout.unmark_queued()  # nor the flag of a fan-out purged from the queue
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        BOOKME_READ_ENV_FILES="0", BOOKME_STATE_DIR=str(tmp_path), DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL, PYTHONUNBUFFERED="1", BOOKME_PROCESS_ROLE="worker",
        WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",
        WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS), WEBHOOK_MAX_ATTEMPTS="30",
        WEBHOOK_RETRY_BASE_SECONDS="0.05", WEBHOOK_RETRY_MAX_SECONDS="0.4",
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [CELERY, "-A", "bookme", "worker", "--loglevel=INFO", "--concurrency=4", "-n",
             f"webhooks-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    proc.log = lambda: log_path.read_text(errors="replace")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_a_flaky_receiver_still_gets_every_event_once_in_order(worker, webhook_settings):
    receiver = Receiver(answer=flaky, slow_seconds=TIMEOUT_SECONDS + 0.3).start()
    try:
        add_endpoint(receiver)
        bookings = [new_booking(f"e2e-{i}") for i in range(BOOKINGS)]
        publish()
        for step in STEPS:  # changes keep coming while earlier ones are being delivered
            for booking in bookings:
                move(booking, step)
            publish()
            for pk in WebhookDelivery.objects.values_list("pk", flat=True):
                deliver.delay(pk)  # a second copy of each task: the claim lets one send at a time

        expected = BOOKINGS * (1 + len(STEPS))
        deadline = time.monotonic() + WITHIN_SECONDS
        while WebhookDelivery.objects.filter(status="DELIVERED").count() < expected:
            assert worker.poll() is None, worker.log()[-4000:]
            assert time.monotonic() < deadline, (
                f"{WebhookDelivery.objects.filter(status='DELIVERED').count()} of {expected} delivered\n"
                + worker.log()[-4000:]
            )
            time.sleep(0.2)

        deliveries = list(WebhookDelivery.objects.select_related("notification").order_by("seq"))
        assert len(deliveries) == Notification.objects.count() == expected
        assert receiver.processed.keys() == {d.event_id for d in deliveries}  # every event, processed once
        assert receiver.bad_signatures == 0 and all(r["valid"] for r in receiver.requests)
        assert all(r["header_id"] == r["id"] for r in receiver.requests)
        for booking in bookings:
            seqs = [d.seq for d in deliveries if d.booking_id == booking.pk]
            assert receiver.order[str(booking.uuid)] == seqs  # in order, per booking
        answers = [flaky(n, None) for n in range(len(receiver.requests))]
        assert receiver.duplicates == answers.count("slow") > 0  # each late answer made a retry of a processed event
        assert receiver.overlaps == 0
        # Every request that reached the receiver is an attempt stored, with what the sender saw.
        attempts = WebhookAttempt.objects.all()
        assert attempts.count() == len(receiver.requests) == sum(d.attempts for d in deliveries)
        assert attempts.filter(status_code=500).count() == answers.count("fail") > 0
        assert attempts.filter(status_code=None, error__startswith="timed out").count() == answers.count("slow")
        assert attempts.filter(status_code=200).count() == answers.count("ok") == expected
    finally:
        receiver.stop()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "Traceback" not in worker.log(), worker.log()[-4000:]
