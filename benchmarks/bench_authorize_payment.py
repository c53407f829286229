"""Throughput and p99 latency of POST /api/bookings/{id}/authorize-payment/ under gunicorn,
beside a trivial endpoint of the same stack (GET /api/health/live/) measured in the same run.

    .venv/bin/python benchmarks/bench_authorize_payment.py [--duration 8] [--rounds 3] [--connections 16]

What it does:
  1. (re)creates its own database (default bookme_bench_authorize; never a developer's data),
     migrates it, and creates wallets with bearer tokens and PENDING_PAYMENT bookings through
     the project's own services;
  2. starts gunicorn with the project's WSGI app (bookme.wsgi:application) on a free localhost
     port, configured through the environment like the real web process;
  3. drives both endpoints with a keep-alive load generator (threads, one connection each,
     raw HTTP/1.1 on sockets so the client spends as little of the shared CPU as possible),
     interleaving trivial and authorize rounds, and prints req/s, p50/p99 and the ratio, plus
     gunicorn's own CPU time per request (from /proc), which other load on a shared machine
     barely moves: compare changes by it when the req/s figures are noisy;
  4. checks the work was real: every 200 signed a fresh authorization with its own nonce.

Both endpoints always run on the same server configuration (--worker-class gthread|sync,
--workers, --threads).

Throttling: authorize-payment is throttled per wallet (10/minute by default). The run sets
AUTHORIZATION_THROTTLE_RATE high (BENCH_THROTTLE_RATE, default 100000000/minute) so no request is refused,
but the throttle still runs on every request (its Redis script, one round trip, is part of the
measured path). authorize-payment needs no chain node (signing is local), so none is started; the chain
settings are anvil's deterministic addresses.

Environment: BENCH_POSTGRES_URL (server, default postgres://postgres@127.0.0.1:5432),
BENCH_REDIS_URL (default redis://127.0.0.1:6379/14).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import database_url, recreate_database  # noqa: E402

ANVIL_SIGNER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
TARGET_RATE = 300.0
TARGET_RATIO = 0.5


def say(message: str) -> None:
    print(message, flush=True)


# -- environment, database, data ------------------------------------------------------------
def bench_environment(database: str, redis_url: str, throttle_rate: str) -> dict[str, str]:
    return {
        "BOOKME_READ_ENV_FILES": "0",
        "DJANGO_SETTINGS_MODULE": "bookme.settings",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_DEBUG": "false",
        "DJANGO_HTTPS": "false",  # served over plain HTTP on localhost
        "DATABASE_URL": database_url(database),
        "DATABASE_CONN_MAX_AGE": "600",
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"bench-{database}",
        "CHAIN_RPC_URLS": "http://127.0.0.1:9",  # never called on this path
        "CHAIN_ID": "31337",
        "ESCROW_CONTRACT_ADDRESS": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
        "USDC_CONTRACT_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "SIGNER_PRIVATE_KEY": ANVIL_SIGNER_KEY,
        "AUTHORIZATION_THROTTLE_RATE": throttle_rate,
        # Every wallet books the one bench provider, several times: no spam caps here.
        "MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET": "1000000",
        "MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER": "1000000",
        "LOG_LEVEL": "WARNING",
    }


@dataclass
class Fixture:
    # (booking uuid, bearer token) pairs; each load thread cycles through its share.
    targets: list[tuple[str, str]]


def prepare_data(wallets: int, bookings_per_wallet: int) -> Fixture:
    """Migrate, then wallets with tokens and PENDING_PAYMENT bookings through the real services."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.core.cache import cache
    from django.db import connections
    from django.utils import timezone
    from eth_utils import keccak, to_checksum_address

    from escrow.services import create_booking
    from escrow.wallet_tokens import issue_wallet_token

    cache.clear()
    scheduled = timezone.now() + timedelta(days=7)
    provider = to_checksum_address(keccak(text="bench-provider")[-20:])
    targets = []
    for i in range(wallets):
        customer = to_checksum_address(keccak(text=f"bench-customer-{i}")[-20:])
        token = issue_wallet_token(customer).token
        for _ in range(bookings_per_wallet):
            booking = create_booking(customer=customer, provider=provider, amount="25.50", scheduled_at=scheduled)
            targets.append((str(booking.uuid), token))
    connections.close_all()
    return Fixture(targets=targets)


def count_authorizations() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT nonce) FROM escrow_signaturenonce")
        return cursor.fetchone()


# -- gunicorn ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    def __init__(self, env: dict[str, str], *, workers: int, threads: int, worker_class: str = "gthread"):
        self.port = free_port()
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.command = [
            str(gunicorn), "bookme.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--keep-alive", "30",  # gthread keeps connections open; sync answers each with Connection: close
            "--log-level", "warning",
        ]
        if worker_class == "gthread":
            self.command += ["--threads", str(threads)]
        # The web process refuses keys that send transactions (only the worker holds them).
        sending_keys = ("OPERATOR_PRIVATE_KEY", "CONTRACT_OWNER_PRIVATE_KEY")
        self.env = {k: v for k, v in {**os.environ, **env}.items() if k not in sending_keys}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Gunicorn:
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            try:
                status, _ = HttpConnection(self.port).request(b"GET", "/api/health/live/")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("gunicorn did not answer in 60 s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the master and its workers have used so far, from /proc: the
        server's cost per request, unaffected by what else the shared machine is running."""
        ticks = 0
        pids = [self.process.pid]
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
            except OSError:
                pass  # a worker restarted between listing and reading
        return ticks / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the load generator ------------------------------------------------------------------------
class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: one socket, prebuilt requests, Content-Length bodies."""

    def __init__(self, port: int):
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def build(method: bytes, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
        lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
        if body or method == b"POST":
            lines += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def request(
        self, method: bytes, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
    ) -> tuple[int, bytes]:
        return self.send(self.build(method, path, headers, body))

    def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self._connect()
        try:
            self.sock.sendall(raw)
            return self._read_response()
        except (ConnectionError, OSError):
            self.close()  # the server closed an idle keep-alive connection: one retry on a new one
            self._connect()
            self.sock.sendall(raw)
            return self._read_response()

    def _read_response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if close:
            self.close()
        return status, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


@dataclass
class Measurement:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    failures: dict[int, int]
    server_cpu_seconds: float = 0.0  # gunicorn's CPU time over the measured window (warm-up excluded)

    @property
    def server_cpu_ms_per_request(self) -> float:
        return self.server_cpu_seconds * 1000 / max(self.requests, 1)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def load(port: int, name: str, requests_for_thread, *, connections: int, duration: float, warmup: float,
         cpu_seconds=None) -> Measurement:
    """Run `connections` threads, each sending its requests back to back on one keep-alive
    connection; latencies of requests completed after the warm-up count."""
    start_gate = threading.Barrier(connections + 1)
    measure_from = [0.0]
    stop_at = [0.0]
    results: list[tuple[list[float], dict[int, int], int]] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        raws = requests_for_thread(index)
        conn = HttpConnection(port)
        latencies: list[float] = []
        failures: dict[int, int] = {}
        done = 0
        start_gate.wait()
        i = 0
        while True:
            raw = raws[i % len(raws)]
            i += 1
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            status, _ = conn.send(raw)
            t1 = time.perf_counter()
            # Counted: requests sent after the warm-up and answered inside the window.
            if t0 >= measure_from[0] and t1 <= stop_at[0]:
                latencies.append((t1 - t0) * 1000)
                done += 1
                if status != 200:
                    failures[status] = failures.get(status, 0) + 1
        conn.close()
        with lock:
            results.append((latencies, failures, done))

    cpu_window: list[float] = []

    def read_cpu_over_window() -> None:
        for moment in (measure_from[0], stop_at[0]):
            time.sleep(max(0.0, moment - time.perf_counter()))
            cpu_window.append(cpu_seconds())

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    measure_from[0] = now + warmup
    stop_at[0] = now + warmup + duration
    if cpu_seconds is not None:
        threads.append(threading.Thread(target=read_cpu_over_window, daemon=True))
        threads[-1].start()
    start_gate.wait()
    for t in threads:
        t.join()
    latencies = [x for r in results for x in r[0]]
    failures: dict[int, int] = {}
    for r in results:
        for status, n in r[1].items():
            failures[status] = failures.get(status, 0) + n
    return Measurement(
        name=name, requests=sum(r[2] for r in results), seconds=duration, latencies_ms=latencies, failures=failures,
        server_cpu_seconds=cpu_window[1] - cpu_window[0] if len(cpu_window) == 2 else 0.0,
    )


# -- main ---------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per round and endpoint")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (trivial, authorize) ×N")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (gthread)")
    parser.add_argument("--worker-class", default="gthread", choices=["gthread", "sync"],
                        help="gunicorn worker class, the same for both endpoints")
    parser.add_argument("--wallets", type=int, default=64)
    parser.add_argument("--bookings-per-wallet", type=int, default=4)
    parser.add_argument("--database", default="bookme_bench_authorize")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()

    throttle_rate = os.environ.get("BENCH_THROTTLE_RATE", "100000000/minute")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    env = bench_environment(args.database, redis_url, throttle_rate)
    os.environ.update(env)
    say(f"database {args.database} (recreated), redis {redis_url}, AUTHORIZATION_THROTTLE_RATE={throttle_rate} "
        "(throttle still evaluated on every request)")
    recreate_database(args.database)
    fixture = prepare_data(args.wallets, args.bookings_per_wallet)
    say(f"{args.wallets} wallets with tokens, {len(fixture.targets)} PENDING_PAYMENT bookings")

    trivial_raw = HttpConnection.build(b"GET", "/api/health/live/")
    authorize_raws = [
        HttpConnection.build(b"POST", f"/api/bookings/{uuid}/authorize-payment/", {"Authorization": f"Bearer {token}"})
        for uuid, token in fixture.targets
    ]

    def trivial_requests(_index):
        return [trivial_raw]

    def authorize_requests(index):
        return authorize_raws[index::args.connections] or authorize_raws

    workers = (
        f"{args.workers} workers × {args.threads} threads (gthread, keep-alive)" if args.worker_class == "gthread"
        else f"{args.workers} workers (sync: one request at a time, connection closed after each)"
    )
    say(f"gunicorn bookme.wsgi:application: {workers}; load: {args.connections} connections, "
        f"{args.rounds} rounds × {args.duration:g} s per endpoint")
    rounds: dict[str, list[Measurement]] = {"trivial": [], "authorize": []}
    with Gunicorn(env, workers=args.workers, threads=args.threads, worker_class=args.worker_class) as server:
        for n in range(args.rounds):
            for name, builder in (("trivial", trivial_requests), ("authorize", authorize_requests)):
                m = load(server.port, name, builder, connections=args.connections, duration=args.duration,
                         warmup=args.warmup, cpu_seconds=server.cpu_seconds)
                rounds[name].append(m)
                failed = f", FAILED {m.failures}" if m.failures else ""
                say(f"  round {n + 1} {name:9s}: {m.rate:8.1f} req/s  p50 {m.percentile(50):6.2f} ms  "
                    f"p99 {m.percentile(99):6.2f} ms  server CPU {m.server_cpu_ms_per_request:5.2f} ms/req  "
                    f"({m.requests} requests{failed})")

    if any(m.failures for ms in rounds.values() for m in ms):
        say("FAILED: some requests did not answer 200")
        return 1
    signed, distinct = count_authorizations()
    answered = sum(m.requests for m in rounds["authorize"])
    if distinct != signed or signed < answered:
        say(f"FAILED: {signed} authorizations recorded, {distinct} distinct nonces, {answered} answered")
        return 1

    # The median round of each endpoint: robust against a noisy neighbour on a shared machine.
    trivial = sorted(rounds["trivial"], key=lambda m: m.rate)[len(rounds["trivial"]) // 2]
    authorize = sorted(rounds["authorize"], key=lambda m: m.rate)[len(rounds["authorize"]) // 2]
    ratio = authorize.rate / trivial.rate
    say("")
    say(f"median round, {os.cpu_count()} CPUs:")
    say(f"  trivial   GET  /api/health/live/                   {trivial.rate:8.1f} req/s  "
        f"p50 {trivial.percentile(50):6.2f} ms  p99 {trivial.percentile(99):6.2f} ms  "
        f"server CPU {trivial.server_cpu_ms_per_request:.2f} ms/req")
    say(f"  authorize POST /api/bookings/{{id}}/authorize-payment/ {authorize.rate:8.1f} req/s  "
        f"p50 {authorize.percentile(50):6.2f} ms  p99 {authorize.percentile(99):6.2f} ms  "
        f"server CPU {authorize.server_cpu_ms_per_request:.2f} ms/req")
    say(f"  ratio authorize/trivial: {ratio:.2f}   ({signed} authorizations signed in total, all nonces distinct)")
    cpu_ratio = trivial.server_cpu_ms_per_request / max(authorize.server_cpu_ms_per_request, 1e-9)
    say(f"  server CPU ratio trivial/authorize per request: {cpu_ratio:.2f} (the throughput ratio a server "
        "alone on the machine would approach; PostgreSQL's and Redis's CPU not included)")
    met = authorize.rate >= TARGET_RATE and ratio >= TARGET_RATIO
    say(f"  target ≥ {TARGET_RATE:.0f} authorizations/s and ≥ {TARGET_RATIO}× trivial: {'MET' if met else 'MISSED'}")
    if args.json:
        print(json.dumps({
            "trivial_rps": round(trivial.rate, 1), "trivial_p99_ms": round(trivial.percentile(99), 2),
            "authorize_rps": round(authorize.rate, 1), "authorize_p99_ms": round(authorize.percentile(99), 2),
            "ratio": round(ratio, 3), "target_met": met,
            "trivial_server_cpu_ms": round(trivial.server_cpu_ms_per_request, 3),
            "authorize_server_cpu_ms": round(authorize.server_cpu_ms_per_request, 3),
            "rounds": {k: [round(m.rate, 1) for m in v] for k, v in rounds.items()},
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
