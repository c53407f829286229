"""The system's processes (worker, beat, web, ASGI, relay) started as the Procfile starts them, each
in its own session with its own log file, for benchmarks, the chaos run and integration tests.

Hand-rolled rather than honcho: honcho stops everything when one process dies, and these callers
must kill one process (SIGKILL, the whole session: a worker's pool children too) and start it again.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Only the worker sends transactions: web, ASGI and beat refuse these keys (BOOKME_PROCESS_ROLE).
SENDING_KEYS = ("OPERATOR_PRIVATE_KEY", "CONTRACT_OWNER_PRIVATE_KEY")


def without_sending_keys(env: dict) -> dict:
    """`env` for a process that sends no transaction (web, ASGI, relay, beat), as the Procfile gives it."""
    return {key: value for key, value in env.items() if key not in SENDING_KEYS} | {"PYTHONUNBUFFERED": "1"}


def role_environment(env: dict, role: str) -> dict:
    """`env` for a process of BOOKME_PROCESS_ROLE `role` (web, worker, beat): sending keys for the worker only."""
    base = {**env, "PYTHONUNBUFFERED": "1"} if role == "worker" else without_sending_keys(env)
    return {**base, "BOOKME_PROCESS_ROLE": role}


def worker_command(node_name: str, concurrency: int = 2, loglevel: str = "INFO", *,
                   gossip_and_mingle: bool = False) -> list[str]:
    """A Celery worker; without gossip and mingle (no peers to hear from, and mingle waits for them at
    start) unless `gossip_and_mingle`, which starts it exactly as the Procfile does."""
    command = [str(BIN / "celery"), "-A", "bookme", "worker", f"--loglevel={loglevel}",
               f"--concurrency={concurrency}", "-n", f"{node_name}@%h"]
    return command if gossip_and_mingle else [*command, "--without-gossip", "--without-mingle"]


def beat_command() -> list[str]:
    return [str(BIN / "celery"), "-A", "bookme", "beat", "--loglevel=INFO"]


def web_command(port: int, workers: int = 2, threads: int = 0) -> list[str]:
    """gunicorn; with `threads`, the Procfile's threaded workers that keep connections alive
    (sync workers close each connection after its answer)."""
    threaded = ["--worker-class", "gthread", "--threads", str(threads), "--keep-alive", "30"] if threads else []
    return [str(BIN / "gunicorn"), "bookme.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), *threaded, "--timeout", "30"]


def asgi_command(port: int) -> list[str]:
    return [str(BIN / "uvicorn"), "bookme.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            "--ws-max-size", "65536", "--no-access-log", "--lifespan", "off"]


def relay_command() -> list[str]:
    return [str(BIN / "python"), "manage.py", "relay_notifications"]


class ProcessGroup:
    """Named processes; `stop()` ends them all (SIGTERM, then SIGKILL of the session)."""

    def __init__(self, log_dir: Path, cwd: Path = REPO_ROOT):
        self.log_dir = Path(log_dir)
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, tuple[list[str], dict]] = {}

    def start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        self.commands[name] = (command, env)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (the process writes to it until it ends)
        self.procs[name] = subprocess.Popen(
            command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.procs[name]

    def restart(self, name: str) -> subprocess.Popen:
        """`name` started again as it was started (after a kill, or after it ended on its own)."""
        command, env = self.commands[name]
        return self.start(name, command, env)

    def kill(self, name: str) -> None:
        """SIGKILL `name` and everything in its session, as a crash would: also when `name` itself
        already ended, so that no pool child it left behind outlives it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):  # the whole session is gone already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-tail:]}" for name in self.procs)

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs.values())

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 60, interval: float = 0.25) -> None:
        """Poll `condition` until it holds; fail with the logs if a process died or time ran out."""
        deadline = time.monotonic() + timeout
        while not condition():
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead:
                raise AssertionError(f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout} s\n{self.logs()}")
            time.sleep(interval)

    def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM (Celery's warm shutdown), wait; the exit codes (None: had to be killed)."""
        codes: dict[str, int | None] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                codes[name] = None
        return codes
