"""A real Celery worker and beat, as subprocesses, against Redis, PostgreSQL and anvil.

Nobody calls the scanner here: beat schedules `scan_chain`, the worker runs it, and a payment
made on anvil shows up as a PAID booking. The processes see the rows this test commits
(`transactional_db`) in pytest-django's test database, and are shut down with SIGTERM (Celery's
warm shutdown) at the end.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from benchmarks._processes import ProcessGroup, beat_command, role_environment, worker_command
from escrow.models import Booking
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.escrow.helpers import wallet
from tests.system import child_environment

pytestmark = [pytest.mark.integration, pytest.mark.chain]

PAID_WITHIN_SECONDS = 30


@pytest.fixture
def celery_processes(transactional_db, chain_settings, settings, tmp_path):
    env = child_environment(chain_settings, settings, tmp_path)
    processes = ProcessGroup(tmp_path)
    worker = worker_command(f"bookme-test-{os.getpid()}", concurrency=1)
    processes.start("worker", worker, role_environment(env, "worker"))
    processes.start("beat", beat_command(), role_environment(env, "beat"))
    try:
        yield processes
    finally:
        processes.stop()


def test_a_payment_on_anvil_turns_the_booking_paid_with_no_manual_call(celery_processes, chain_settings):
    chain = chain_settings
    customer = chain.accounts.customers[1]
    booking = create_booking(
        customer=customer.address,
        provider=wallet("celery-provider").address,
        amount="25",
        scheduled_at=timezone.now() + timedelta(days=1),
    )
    auth = sign_payment_authorization(booking)
    tx_hash = chain.pay_booking(auth.message, auth.signature, customer.address)["transactionHash"].to_0x_hex()

    deadline = time.monotonic() + PAID_WITHIN_SECONDS
    status = booking.status
    while time.monotonic() < deadline and status != "PAID":
        assert celery_processes.alive(), celery_processes.log("worker")[-3000:] + celery_processes.log("beat")[-2000:]
        time.sleep(0.25)
        status = Booking.objects.values_list("status", flat=True).get(pk=booking.pk)

    assert status == "PAID", (
        f"booking still {status} after {PAID_WITHIN_SECONDS}s\n--- worker ---\n{celery_processes.log('worker')[-4000:]}"
        f"\n--- beat ---\n{celery_processes.log('beat')[-2000:]}"
    )
    booking.refresh_from_db()
    assert booking.payment_tx_hash == tx_hash
    change = booking.status_changes.get(to_status="PAID")
    assert (change.source, change.tx_hash) == ("chain", tx_hash)

    codes = celery_processes.stop()
    assert codes == {"worker": 0, "beat": 0}, codes
    worker_log = celery_processes.log("worker")
    assert "chain_events.scan_chain" in worker_log or "scan_chain" in worker_log
    assert "Traceback" not in worker_log, worker_log[-4000:]
    assert "Traceback" not in celery_processes.log("beat")
