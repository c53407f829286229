"""A real Celery worker and beat, as subprocesses, against Redis, PostgreSQL and anvil.

Nobody calls the scanner here: beat schedules `scan_chain`, the worker runs it, and a payment
made on anvil shows up as a PAID booking. The processes see the rows this test commits
(`transactional_db`) in pytest-django's test database, and are shut down with SIGTERM (Celery's
warm shutdown) at the end.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from escrow.models import Booking
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.escrow.helpers import wallet

pytestmark = [pytest.mark.integration, pytest.mark.chain]

REPO_ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).parent / "celery")
PAID_WITHIN_SECONDS = 30


def _database_url() -> str:
    """The database this test really uses (pytest-django's test_<name>), as a URL for the children."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _child_environment(chain, settings, state_dir: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "BOOKME_READ_ENV_FILES": "0",
            "BOOKME_STATE_DIR": str(state_dir),  # beat's schedule file goes here, not into var/
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CHAIN_RPC_URLS": chain.url,
            "CHAIN_ID": str(chain.chain_id),
            "ESCROW_CONTRACT_ADDRESS": chain.escrow,
            "USDC_CONTRACT_ADDRESS": chain.usdc,
            # Start at the current head: earlier blocks hold nothing of this test.
            "CHAIN_START_BLOCK": str(chain.block_number()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class CeleryProcesses:
    def __init__(self, env: dict, log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        node = f"bookme-test-{os.getpid()}@%h"
        commands = {
            "worker": [CELERY, "-A", "bookme", "worker", "--loglevel=INFO", "--concurrency=1", "-n", node,
                       "--without-gossip", "--without-mingle"],
            "beat": [CELERY, "-A", "bookme", "beat", "--loglevel=INFO"],
        }
        for name, command in commands.items():
            log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (the process writes to it until it is stopped)
            self.procs[name] = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM (warm shutdown), wait; returns the exit codes (None: had to be killed)."""
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker's pool children too
                proc.wait(10)
                codes[name] = None
        return codes


@pytest.fixture
def celery_processes(transactional_db, chain_settings, settings, tmp_path):
    processes = CeleryProcesses(_child_environment(chain_settings, settings, tmp_path), tmp_path)
    processes.start()
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
