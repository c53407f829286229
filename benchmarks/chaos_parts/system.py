"""The whole system under test, on its own ports and database: anvil (a block a second) with
the contracts deployed, the faulty primary RPC proxy in front of it, migrations, then gunicorn
(web), a Celery worker and Celery beat, each its own process group so that worker and beat
can be SIGKILLed and started again one at a time. The backend's CHAIN_RPC_URLS are the proxy
(primary) and anvil itself (the healthy fallback)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from web3 import Web3

from benchmarks._common import drop_database
from benchmarks._processes import (
    REPO_ROOT,
    ProcessGroup,
    beat_command,
    role_environment,
    web_command,
    worker_command,
)
from contracts.anvil import ANVIL_ADDRESSES, ANVIL_PRIVATE_KEYS, AnvilProcess, find_free_port
from contracts.deploy import Deployment, deploy_stack, escrow_abi, transact

from .rpc_faults import FaultyRpcProxy

OWNER_KEY, SIGNER_KEY, OPERATOR_KEY = ANVIL_PRIVATE_KEYS[0], ANVIL_PRIVATE_KEYS[1], ANVIL_PRIVATE_KEYS[2]
FEE_RECIPIENT = ANVIL_ADDRESSES[3]


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
        self.processes = ProcessGroup(self.state_dir)  # each process's log is <state_dir>/<name>.log
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
        drop_database(self.database_url, create_empty=True)
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
                       env=self._command_environment(), check=True)
        for name, command in self._commands().items():
            self.processes.start(name, command, role_environment(self._base_environment(), name))
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

    def _base_environment(self) -> dict[str, str]:
        # PYTHONPATH: the code of this tree, whatever the console scripts' own path says.
        return {**os.environ, **self.env, "PYTHONPATH": str(REPO_ROOT)}

    def _command_environment(self) -> dict[str, str]:
        """A one-off management command's: the operator key stays, as in an operator's shell."""
        return {**self._base_environment(), "BOOKME_PROCESS_ROLE": "command", "LOG_LEVEL": "WARNING"}

    def _commands(self) -> dict[str, list[str]]:
        """As the Procfile starts them (threaded web workers, the worker with gossip and mingle)."""
        return {
            "web": web_command(self.web_port, self.web_workers, threads=4),
            "worker": worker_command(f"chaos-{os.getpid()}", self.worker_concurrency, gossip_and_mingle=True),
            "beat": beat_command(),
        }

    def manage(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """A management command against the system (a one-off process, as an operator runs it)."""
        return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              env=self._command_environment(), timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL the process group (a worker's pool children too): no clean shutdown."""
        self.down_on_purpose.add(name)
        self.processes.kill(name)

    def restart(self, name: str) -> None:
        self.processes.restart(name)
        self.restarts[name] += 1
        self.down_on_purpose.discard(name)

    def _supervise(self) -> None:
        """As a process manager would: a process that ended on its own is recorded and started again."""
        while not self._stopping.wait(2.0):
            for name, proc in list(self.processes.procs.items()):
                if proc.poll() is None or name in self.down_on_purpose or self._stopping.is_set():
                    continue
                self._record_exit(name, proc)
                self.processes.restart(name)

    def _record_exit(self, name: str, proc: subprocess.Popen) -> None:
        last = [line for line in self.log_tail(name, 4000).splitlines() if line.strip()][-1:]
        self.exits.append(f"{name} exited with {proc.returncode} at {time.strftime('%H:%M:%S')}: "
                          f"{last[0][:200] if last else ''}")

    def wait_ready(self, timeout: float = 120) -> None:
        """Until web answers its health check (a 503 too: up, with a dependency down); fails with the
        logs if a process ended first."""
        def web_answers() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(self.base_url + "/api/health/", timeout=2).status_code in (200, 503)
            return False

        self.processes.wait_for(f"web answering on {self.base_url}", web_answers, timeout=timeout, interval=0.3)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return self.processes.log(name)[-chars:]

    # -- tear-down -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        self.processes.stop(timeout=20)
        if self.proxy is not None:
            self.proxy.stop()
        self.anvil.stop()

    # -- broker ----------------------------------------------------------------------------------
    def _flush_redis(self) -> None:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()  # no broker messages or locks from an earlier run
