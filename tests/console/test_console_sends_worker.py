"""The whole path with real processes: an operator's console action, in a process without the
operator key (this test process, as the web process), is carried out by a real Celery worker
that holds it; beat's scanner then applies the refund's log to the booking.

The worker and beat run as the Procfile runs them (BOOKME_PROCESS_ROLE worker and beat; beat
without the key), against this test's database, Redis and anvil.
"""
from __future__ import annotations

import os

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from benchmarks._processes import ProcessGroup, beat_command, role_environment, worker_command
from escrow.models import Booking
from reconciliation.models import EmergencyPause, SentTransaction, TxStatus
from tests.system import child_environment

from .conftest import make_booking, pay_on_chain
from .test_admin_permissions import REASON, run_action

pytestmark = [pytest.mark.integration, pytest.mark.chain]

@pytest.fixture
def worker_and_beat(transactional_db, chain_settings, settings, tmp_path):
    env = child_environment(chain_settings, settings, tmp_path)
    processes = ProcessGroup(tmp_path)
    # As the Procfile: the worker holds OPERATOR_PRIVATE_KEY (pytest.ini's), beat does not.
    processes.start("worker", worker_command(f"console-sends-{os.getpid()}"), role_environment(env, "worker"))
    processes.start("beat", beat_command(), role_environment(env, "beat"))
    try:
        yield processes
    finally:
        processes.stop()


def test_the_worker_sends_what_the_console_queued(worker_and_beat, chain_settings, settings, clients, operator):
    settings.OPERATOR_PRIVATE_KEY = None  # this process is the web process: it cannot send
    customer = chain_settings.accounts.customers[0]
    booking = make_booking(customer.address)
    pay_on_chain(chain_settings, booking, customer)
    worker_and_beat.wait_for("the payment scanned", lambda: Booking.objects.get(pk=booking.pk).status == "PAID")

    response = run_action(clients["operator"], "escrow_booking", "emergency_cancel", booking.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    worker_and_beat.wait_for("the refund mined", lambda: SentTransaction.objects.filter(
        booking=booking, status=TxStatus.MINED).exists())
    sent = SentTransaction.objects.get(booking=booking)
    assert (sent.actor, sent.from_address) == ("staff:olivia", chain_settings.accounts.operator.address)
    worker_and_beat.wait_for("the refund scanned", lambda: Booking.objects.get(pk=booking.pk).status == "CANCELLED")
    worker_and_beat.wait_for("the outcome in the booking's history", lambda: LogEntry.objects.filter(
        object_id=str(booking.pk), user=operator,
        change_message=f"Emergency cancel sent by the worker: tx {sent.tx_hash} (MINED)").exists())

    clients["operator"].post(reverse("admin:reconciliation_emergencypause_pause"), {"reason": REASON, "confirm": "yes"})
    worker_and_beat.wait_for("the pause", lambda: EmergencyPause.objects.filter(succeeded=True).exists())
    assert chain_settings.escrow_contract.functions.paused().call() is True

    codes = worker_and_beat.stop()
    assert codes == {"worker": 0, "beat": 0}, worker_and_beat.logs()
    assert "Traceback" not in worker_and_beat.log("worker") + worker_and_beat.log("beat"), worker_and_beat.logs()
