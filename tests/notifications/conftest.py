"""Live stream fixtures: a real uvicorn (bookme.asgi) and a real relay (manage.py
relay_notifications) as subprocesses on the test database and this run's Redis, started once per
module, and a small synchronous WebSocket client (the `websockets` library)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HEARTBEAT_SECONDS = 1.0  # the servers' STREAM_HEARTBEAT_SECONDS (a revoked token closes within it)
AUTH_TIMEOUT_SECONDS = 1.0
CHILD_APPLICATION_NAME = "bookme-stream-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class StreamServers:
    def __init__(self, log_dir: Path, *, only: tuple[str, ...] = ("asgi", "relay"), extra_env: dict | None = None,
                 application_name: str = CHILD_APPLICATION_NAME):
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws/bookings/"
        self.log_dir = log_dir
        env = dict(os.environ)
        env.update({
            "BOOKME_READ_ENV_FILES": "0",
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "STREAM_AUTH_TIMEOUT_SECONDS": str(AUTH_TIMEOUT_SECONDS),
            "PYTHONUNBUFFERED": "1",
            "PGAPPNAME": application_name,  # libpq names the children's database sessions
            **(extra_env or {}),
        })
        self.application_name = application_name
        env.pop("OPERATOR_PRIVATE_KEY", None)  # the web role refuses it, as the Procfile does
        self.commands = {
            "asgi": [PYTHON, "-m", "uvicorn", "bookme.asgi:application", "--host", "127.0.0.1",
                     "--port", str(self.port), "--log-level", "warning"],
            "relay": [PYTHON, "manage.py", "relay_notifications"],
        }
        self.commands = {name: command for name, command in self.commands.items() if name in only}
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        for name, command in self.commands.items():
            log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (written until the process stops)
            self.procs[name] = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.alive(), self.logs()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("uvicorn did not listen within 30 s\n" + self.logs())

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            for name in self.procs
        )

    def stop(self) -> dict[str, int | None]:
        """SIGTERM, wait; the exit codes (None: had to be killed). uvicorn re-raises the SIGTERM it
        handled once it has shut down cleanly, so its clean exit code is -SIGTERM."""
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                codes[name] = None
        self._wait_for_database_sessions_to_end()
        return codes

    def _wait_for_database_sessions_to_end(self, timeout: float = 5.0) -> None:
        """The children's backends outlive them by a moment; the test database is dropped after this."""
        deadline = time.monotonic() + timeout
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = %s",
                    [self.application_name],
                )
                if cursor.fetchone()[0] == 0:
                    return
                time.sleep(0.05)


@pytest.fixture(scope="module")
def stream_servers(django_db_setup, django_db_blocker, tmp_path_factory):
    servers = StreamServers(tmp_path_factory.mktemp("stream"))
    servers.start()
    try:
        yield servers
    finally:
        with django_db_blocker.unblock():
            codes = servers.stop()
        logs = servers.logs()
        assert codes == {"asgi": -signal.SIGTERM, "relay": 0}, logs
        assert "Traceback" not in logs, logs


class StreamClient:
    """One WebSocket on /ws/bookings/; frames are parsed JSON."""

    def __init__(self, url: str, *, headers: dict | None = None):
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(
            connect(url, additional_headers=headers or {}, open_timeout=10, max_size=2**20)
        )

    def send(self, frame) -> None:
        self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def recv(self, timeout: float = 5.0) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def next(self, kind: str, timeout: float = 5.0, *, skip: tuple[str, ...] = ("heartbeat",)) -> dict:
        """The next frame of type `kind`, skipping `skip` frames (anything else is a failure)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == kind:
                return frame
            assert frame["type"] in skip, f"expected {kind}, got {frame}"

    def events(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The next `count` event frames, wherever the end of a replay falls among them."""
        return [self.next("event", timeout, skip=("heartbeat", "replayed")) for _ in range(count)]

    def replay(self, timeout: float = 5.0) -> tuple[list[dict], int]:
        """The replayed event frames up to the `replayed` frame, and its `through`."""
        events = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == "replayed":
                return events, frame["through"]
            if frame["type"] == "event":
                events.append(frame)
            else:
                assert frame["type"] == "heartbeat", f"unexpected frame {frame}"

    def quiet_until_heartbeat(self, timeout: float = 5.0) -> None:
        """No event arrives before the next heartbeat (which itself reads the outbox)."""
        frame = self.recv(timeout)
        assert frame["type"] == "heartbeat", f"unexpected frame {frame}"

    def closed_with(self, timeout: float = 5.0) -> tuple[list[dict], int]:
        """Frames until the server closes the socket, and the close code."""
        frames = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                frames.append(self.recv(max(0.01, deadline - time.monotonic())))
        except ConnectionClosed as exc:
            return frames, exc.rcvd.code if exc.rcvd else None
        raise AssertionError(f"socket still open after {timeout} s: {frames}")

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def open_stream(stream_servers):
    clients = []

    def open_(headers: dict | None = None, path_suffix: str = "") -> StreamClient:
        client = StreamClient(stream_servers.url + path_suffix, headers=headers)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.close()
