"""The whole path with real processes: an operator's console action, in a process without the
operator key (this test process, as the web process), is carried out by a real Celery worker
that holds it; beat's scanner then applies the refund's log to the booking.

The worker and beat run as the Procfile runs them (BOOKME_PROCESS_ROLE worker and beat; beat
without the key), against this test's database, Redis and anvil.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.urls import reverse

from escrow.models import Booking
from reconciliation.models import EmergencyPause, SentTransaction, TxStatus

from .conftest import make_booking, pay_on_chain
from .test_admin_permissions import REASON, run_action

pytestmark = [pytest.mark.integration, pytest.mark.chain]

REPO_ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).parent / "celery")
WITHIN_SECONDS = 45


def _database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Processes:
    def __init__(self, chain, settings, state_dir: Path):
        self.state_dir = state_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self.env.update(
            BOOKME_READ_ENV_FILES="0", BOOKME_STATE_DIR=str(state_dir), DATABASE_URL=_database_url(),
            REDIS_URL=settings.REDIS_URL, CHAIN_RPC_URLS=chain.url, CHAIN_ID=str(chain.chain_id),
            ESCROW_CONTRACT_ADDRESS=chain.escrow, USDC_CONTRACT_ADDRESS=chain.usdc,
            CHAIN_START_BLOCK=str(chain.block_number()), PYTHONUNBUFFERED="1",
        )
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        worker = {**self.env, "BOOKME_PROCESS_ROLE": "worker"}  # holds OPERATOR_PRIVATE_KEY (pytest.ini's)
        beat = {k: v for k, v in self.env.items() if k != "OPERATOR_PRIVATE_KEY"} | {"BOOKME_PROCESS_ROLE": "beat"}
        commands = {
            "worker": ([CELERY, "-A", "bookme", "worker", "--loglevel=INFO", "--concurrency=2", "-n",
                        f"console-sends-{os.getpid()}@%h", "--without-gossip", "--without-mingle"], worker),
            "beat": ([CELERY, "-A", "bookme", "beat", "--loglevel=INFO"], beat),
        }
        for name, (command, env) in commands.items():
            log = open(self.state_dir / f"{name}.log", "wb")  # noqa: SIM115 (the process writes to it until it is stopped)
            self.procs[name] = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.state_dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return f"--- worker ---\n{self.log('worker')[-4000:]}\n--- beat ---\n{self.log('beat')[-2000:]}"

    def wait_for(self, what: str, condition) -> None:
        deadline = time.monotonic() + WITHIN_SECONDS
        while not condition():
            assert all(p.poll() is None for p in self.procs.values()), self.logs()
            assert time.monotonic() < deadline, f"{what} not within {WITHIN_SECONDS} s\n{self.logs()}"
            time.sleep(0.25)

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                codes[name] = None
        return codes


@pytest.fixture
def worker_and_beat(transactional_db, chain_settings, settings, tmp_path):
    processes = Processes(chain_settings, settings, tmp_path)
    processes.start()
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
