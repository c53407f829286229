"""The system's processes for integration tests: the environment that points them at this test's
database, Redis and anvil (starting and stopping them is benchmarks._processes.ProcessGroup), and
the README's run command started once per session (the `bin_run` fixture, tests/conftest.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import redis
from django.db import connection

from benchmarks._common import drop_database
from contracts.anvil import find_free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """The database this test really uses (pytest-django's test_<name>), as a URL for child processes."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


test_database_url.__test__ = False  # a helper, not a test


def child_environment(chain, settings, state_dir: Path) -> dict:
    """What a worker, beat, web or ASGI process of this test needs; pytest's own variables left out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.update(
        BOOKME_READ_ENV_FILES="0",
        BOOKME_STATE_DIR=str(state_dir),  # beat's schedule file goes here, not into var/
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CHAIN_RPC_URLS=chain.url,
        CHAIN_ID=str(chain.chain_id),
        ESCROW_CONTRACT_ADDRESS=chain.escrow,
        USDC_CONTRACT_ADDRESS=chain.usdc,
        # Start at the current head: earlier blocks hold nothing of this test.
        CHAIN_START_BLOCK=str(chain.block_number()),
        PYTHONUNBUFFERED="1",
    )
    return env


# -- the README's run command, once per test session ------------------------------------------------
@dataclass
class RunningSystem:
    """`bin/run` as a developer starts it, on ports, a database, a Redis DB and a state directory of
    its own (so it never touches this test run's database or a developer's system)."""

    process: subprocess.Popen
    env: dict
    state_dir: Path
    log_path: Path
    web_port: int
    asgi_port: int
    chain_port: int
    worker_metrics_port: int

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def _beside_test_database(suffix: str) -> str:
    """A database named after this run's (CI names differ), never the test database itself."""
    url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    return urllib.parse.urlunsplit(url._replace(path=url.path.rstrip("/") + suffix))


def _redis_beside_test_redis(offset: int) -> str:
    url = urllib.parse.urlsplit(os.environ["REDIS_URL"])
    return urllib.parse.urlunsplit(url._replace(path=f"/{(int(url.path.strip('/') or 0) + offset) % 16}"))


def start_bin_run(state_dir: Path) -> RunningSystem:
    database_url, redis_url = _beside_test_database("_sys"), _redis_beside_test_redis(4)
    drop_database(database_url)  # not created again: bin/setup creates it, as on a developer's first run
    redis.Redis.from_url(redis_url).flushdb()
    ports = [find_free_port() for _ in range(4)]
    # The environment a developer's shell has: none of this test run's chain settings (bin/run
    # writes its own chain.env), everything else overridden for this system alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "CHAIN_", "ESCROW_", "USDC_"))}
    env.update(
        BOOKME_READ_ENV_FILES="1",  # the run command reads the chain.env that localchain writes
        BOOKME_STATE_DIR=str(state_dir),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CACHE_KEY_PREFIX="bookme-bin-run",
        WEB_PORT=str(ports[0]),
        ASGI_PORT=str(ports[1]),
        CHAIN_PORT=str(ports[2]),
        WORKER_METRICS_PORT=str(ports[3]),
        DJANGO_DEBUG="true",
        WEB_WORKERS="1",
        WORKER_CONCURRENCY="1",
    )
    log_path = state_dir / "run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bin/run"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return RunningSystem(process, env, state_dir, log_path, *ports)


def stop_bin_run(system: RunningSystem) -> None:
    os.killpg(system.process.pid, signal.SIGTERM)
    try:
        system.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(system.process.pid, signal.SIGKILL)
    subprocess.run(
        [str(REPO_ROOT / ".venv/bin/python"), "manage.py", "localchain", "--stop",
         "--state-dir", str(system.state_dir)],
        cwd=REPO_ROOT, env=system.env, capture_output=True, timeout=60,
    )
    redis.Redis.from_url(system.env["REDIS_URL"]).flushdb()
