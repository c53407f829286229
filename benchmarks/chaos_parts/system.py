"""The whole system under test, on its own ports and database: anvil (a block a second) with
the contracts deployed, the faulty primary RPC proxy in front of it, migrations, then gunicorn
(web), a Celery worker and Celery beat, each its own process group so that worker and beat
can be SIGKILLed and started again one at a time. The backend's CHAIN_RPC_URLS are the proxy
(primary) and anvil itself (the healthy fallback)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from web3 import Web3

from contracts.anvil import ANVIL_ADDRESSES, ANVIL_PRIVATE_KEYS, AnvilProcess, find_free_port
from contracts.deploy import Deployment, deploy_stack, escrow_abi, transact

from .rpc_faults import FaultyRpcProxy

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OWNER_KEY, SIGNER_KEY, OPERATOR_KEY = ANVIL_PRIVATE_KEYS[0], ANVIL_PRIVATE_KEYS[1], ANVIL_PRIVATE_KEYS[2]
FEE_RECIPIENT = ANVIL_ADDRESSES[3]
# Only the worker holds the operator key (as in the Procfile): web and beat refuse it.
SENDING_KEYS = ("OPERATOR_PRIVATE_KEY", "CONTRACT_OWNER_PRIVATE_KEY")


class System:
    def __init__(self, *, database_url: str, redis_url: str, settings: dict[str, str], completion_delay: int,
                 web_workers: int = 2, worker_concurrency: int = 4):
        self.database_url = database_url
        self.redis_url = redis_url
        self.settings = settings
        self.completion_delay = completion_delay
        self.web_workers = web_workers
        self.worker_concurrency = worker_concurrency
        self.state_dir = Path(tempfile.mkdtemp(prefix="bookme-chaos-"))
        self.web_port = find_free_port()
        self.anvil = AnvilProcess(block_time=1, extra_args=["--no-request-size-limit"])
        self.proxy: FaultyRpcProxy | None = None
        self.deployment: Deployment | None = None
        self.env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {"worker": 0, "beat": 0}
        self.down_on_purpose: set[str] = set()  # SIGKILLed, not started again yet
        self.exits: list[str] = []  # processes that ended on their own (and were started again)
        self._stopping = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def siwe_domain(self) -> str:
        return f"127.0.0.1:{self.web_port}"

    # -- bring-up --------------------------------------------------------------------------
    def start(self) -> None:
        self._recreate_database()
        self._flush_redis()
        self.anvil.start(timeout=60)
        w3 = Web3(Web3.HTTPProvider(self.anvil.url, request_kwargs={"timeout": 60}))
        self.deployment = deploy_stack(
            w3, owner_key=OWNER_KEY, signer_address=ANVIL_ADDRESSES[1], operator_address=ANVIL_ADDRESSES[2],
            fee_recipient_address=FEE_RECIPIENT,
        )
        # Auto-complete within the run: the contract lets the operator complete this long after payment.
        transact(w3, self.deployment.escrow, escrow_abi(), "setOperatorCompletionDelay", [self.completion_delay],
                 OWNER_KEY)
        # The backend's clocks are wall time; keep the chain's in step (no evm_increaseTime anywhere).
        self.proxy = FaultyRpcProxy(self.anvil.url, hang_seconds=float(self.settings["RPC_TIMEOUT_SECONDS"]) + 2)
        self.proxy.start()
        self.env = self._environment()
        os.environ.update(self.env)  # the tool's own Django (the invariant checks) reads the same settings
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO_ROOT,
                       env={**self._process_env("command"), "LOG_LEVEL": "WARNING"}, check=True)
        for name in ("web", "worker", "beat"):
            self.start_process(name)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _environment(self) -> dict[str, str]:
        return {
            "BOOKME_READ_ENV_FILES": "0",
            "DJANGO_SETTINGS_MODULE": "bookme.settings",
            "DJANGO_SECRET_KEY": "chaos-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
            "DJANGO_DEBUG": "false",
            "DJANGO_HTTPS": "false",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CACHE_KEY_PREFIX": f"chaos-{self.database_url.rsplit('/', 1)[-1]}",
            "BOOKME_STATE_DIR": str(self.state_dir),
            "CHAIN_RPC_URLS": f"{self.proxy.url},{self.anvil.url}",
            "CHAIN_ID": str(self.deployment.chain_id),
            "ESCROW_CONTRACT_ADDRESS": self.deployment.escrow,
            "USDC_CONTRACT_ADDRESS": self.deployment.usdc,
            "CHAIN_START_BLOCK": str(self.deployment.block_number),
            "SIGNER_PRIVATE_KEY": SIGNER_KEY,
            "OPERATOR_PRIVATE_KEY": OPERATOR_KEY,
            "SIWE_DOMAIN": self.siwe_domain,
            "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **self.settings,
        }

    def _process_env(self, role: str) -> dict[str, str]:
        # PYTHONPATH: the code of this tree, whatever the console scripts' own path says.
        env = {**os.environ, **self.env, "BOOKME_PROCESS_ROLE": role, "PYTHONPATH": str(REPO_ROOT)}
        if role in ("web", "beat"):
            for key in SENDING_KEYS:
                env.pop(key, None)
        return env

    def _commands(self) -> dict[str, list[str]]:
        return {
            "web": [str(BIN / "gunicorn"), "bookme.wsgi:application", "--bind", f"127.0.0.1:{self.web_port}",
                    "--workers", str(self.web_workers), "--worker-class", "gthread", "--threads", "4",
                    "--keep-alive", "30", "--timeout", "30"],
            "worker": [str(BIN / "celery"), "-A", "bookme", "worker", "--loglevel=INFO",
                       f"--concurrency={self.worker_concurrency}", "-n", f"chaos-{os.getpid()}@%h"],
            "beat": [str(BIN / "celery"), "-A", "bookme", "beat", "--loglevel=INFO"],
        }

    def manage(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """A management command against the system (a one-off process, as an operator runs it)."""
        return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**self._process_env("command"), "LOG_LEVEL": "WARNING"}, timeout=timeout)

    def start_process(self, name: str) -> None:
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 (the process writes to it until it ends)
        self.procs[name] = subprocess.Popen(
            self._commands()[name], cwd=REPO_ROOT, env=self._process_env(name), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self, name: str) -> None:
        """SIGKILL the process group (a worker's pool children too): no clean shutdown."""
        proc = self.procs[name]
        self.down_on_purpose.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def restart(self, name: str) -> None:
        self.start_process(name)
        self.restarts[name] += 1
        self.down_on_purpose.discard(name)

    def _supervise(self) -> None:
        """As a process manager would: a process that ended on its own is recorded and started again."""
        while not self._stopping.wait(2.0):
            for name, proc in list(self.procs.items()):
                if proc.poll() is None or name in self.down_on_purpose or self._stopping.is_set():
                    continue
                self._record_exit(name, proc)
                self.start_process(name)

    def _record_exit(self, name: str, proc: subprocess.Popen) -> None:
        last = [line for line in self.log_tail(name, 4000).splitlines() if line.strip()][-1:]
        self.exits.append(f"{name} exited with {proc.returncode} at {time.strftime('%H:%M:%S')}: "
                          f"{last[0][:200] if last else ''}")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.base_url + "/api/health/", timeout=2).status_code in (200, 503):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"web not answering after {timeout:.0f} s; logs in {self.state_dir}")
            time.sleep(0.3)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.state_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- tear-down -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self.proxy is not None:
            self.proxy.stop()
        self.anvil.stop()

    # -- database and broker -----------------------------------------------------------------
    def _recreate_database(self) -> None:
        import psycopg

        server, name = self.database_url.rsplit("/", 1)
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    def _flush_redis(self) -> None:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()  # no broker messages or locks from an earlier run
