"""Latency benchmark: from a payment's block to the booking showing PAID through the API.

    .venv/bin/python benchmarks/bench_latency.py                 # 50 payments per mode
    .venv/bin/python benchmarks/bench_latency.py --payments 10   # quick run

The whole system with default settings, as the Procfile runs it: a Celery worker, Celery beat
and gunicorn (2 workers), against anvil mining a block every second (`--block-time 1`), its own
database `bookme_bench_latency` and Redis. Each payment goes the way a client's does: booking
created with POST /api/bookings/, authorization from POST .../authorize-payment/, then the
customer's wallet sends createAndPayBooking to anvil. Then:

(a) scanner alone: the client polls GET /api/bookings/<id>/ (every 20 ms) until PAID;
(b) fast path: as soon as the client sees the receipt (polled every 20 ms) it POSTs
    .../submit-transaction/, then GETs the booking; done when the API shows PAID.

Latency = when the API first showed PAID - when the payment's block was mined. "Mined" is
the wall time a watcher (polling eth_blockNumber every 5 ms) first saw the block; the block
timestamp has one-second resolution, so latencies from it are printed too, for reference.
Payments run in --flows concurrent client flows. Target (issue 4): p95 <= 2 s (a), <= 0.3 s (b).
Environment: BENCH_POSTGRES_URL, BENCH_REDIS_URL (default redis://127.0.0.1:6379/13).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from benchmarks._common import (  # noqa: E402
    AUTH_TUPLE,
    PAY_SELECTOR,
    PAYMENT_GAS,
    BenchChain,
    bench_addresses,
    configure_environment,
    percentile,
    recreate_database,
    say,
    setup_django,
)
from benchmarks._processes import ProcessGroup, beat_command, role_environment, web_command, worker_command  # noqa: E402
from contracts.anvil import find_free_port  # noqa: E402

DATABASE = "bookme_bench_latency"
TARGET_SCANNER_P95 = 2.0
TARGET_FAST_PATH_P95 = 0.3
POLL_SECONDS = 0.02
BIN = Path(sys.executable).parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=50, help="payments per mode (default 50)")
    parser.add_argument("--flows", type=int, default=5, help="concurrent client flows (default 5)")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--keep-logs", action="store_true", help="print where the process logs are and keep them")
    return parser.parse_args()


# -- the system under test ------------------------------------------------------------------------
class System(ProcessGroup):
    """worker + beat + gunicorn, started like the Procfile (default settings), each in its own session."""

    def __init__(self, env: dict, state_dir: Path):
        super().__init__(state_dir)
        self.env = {**os.environ, **env, "BOOKME_STATE_DIR": str(state_dir)}
        self.port = find_free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_all(self) -> None:
        self.start("worker", worker_command(f"bench-latency-{os.getpid()}"), role_environment(self.env, "worker"))
        self.start("beat", beat_command(), role_environment(self.env, "beat"))
        self.start("web", web_command(self.port), role_environment(self.env, "web"))

    def wait_ready(self, timeout: float = 60) -> None:
        from chain_events.models import SyncCursor

        deadline = time.monotonic() + timeout
        web = scanned = False
        while not (web and scanned):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            if not web:
                with contextlib.suppress(requests.RequestException):
                    web = requests.get(self.base_url + "/api/health/", timeout=2).status_code in (200, 503)
            scanned = scanned or SyncCursor.objects.exists()
            if time.monotonic() > deadline:
                raise SystemExit(f"system not ready after {timeout}s (web {web}, scanner ran {scanned})")
            time.sleep(0.2)


class BlockWatcher(threading.Thread):
    """Records the wall time each block number was first seen (polling eth_blockNumber)."""

    def __init__(self, chain: BenchChain, interval: float = 0.005):
        super().__init__(daemon=True)
        self.chain = chain
        self.interval = interval
        self.first_seen: dict[int, float] = {}
        self.stopped = threading.Event()
        self.session = requests.Session()

    def run(self):
        last = -1
        while not self.stopped.is_set():
            reply = self.session.post(
                self.chain.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
            ).json()
            number = int(reply["result"], 16)
            now = time.time()
            for n in range(last + 1, number + 1):
                self.first_seen.setdefault(n, now)
            last = max(last, number)
            self.stopped.wait(self.interval)

    def mined_at(self, number: int, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        while number not in self.first_seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"block {number} never seen")
            time.sleep(0.005)
        return self.first_seen[number]


# -- one client ------------------------------------------------------------------------------------
class Client:
    def __init__(self, system: System, chain: BenchChain, customer: str, token: str, provider: str):
        self.system = system
        self.chain = chain
        self.customer = customer
        self.provider = provider
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.rpc = requests.Session()

    def api(self, method: str, path: str, body=None) -> requests.Response:
        response = self.http.request(method, self.system.base_url + path, json=body, timeout=30)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    def rpc_call(self, method, params):
        reply = self.rpc.post(
            self.chain.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30,
        ).json()
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def prepare(self) -> tuple[str, dict]:
        """A booking (API) and its signed authorization (API)."""
        scheduled = (datetime.now(UTC) + timedelta(days=3)).isoformat()
        booking = self.api(
            "POST", "/api/bookings/", {"provider": self.provider, "amount": "12.34", "scheduled_at": scheduled},
        ).json()
        auth = self.api("POST", f"/api/bookings/{booking['id']}/authorize-payment/").json()
        return booking["id"], auth

    def pay(self, auth: dict) -> str:
        from eth_abi import encode as abi_encode

        m = auth["message"]
        values = (
            bytes.fromhex(m["bookingId"][2:]), m["customer"], m["provider"], m["inviter"], int(m["amount"]),
            int(m["platformFeeRate"]), int(m["inviterFeeRate"]), int(m["expiry"]), int(m["nonce"]),
        )
        data = PAY_SELECTOR + abi_encode([AUTH_TUPLE, "bytes"], [values, bytes.fromhex(auth["signature"][2:])])
        tx = {"from": self.customer, "to": self.chain.escrow, "data": "0x" + data.hex(), "gas": hex(PAYMENT_GAS)}
        return self.rpc_call("eth_sendTransaction", [tx])

    def wait_receipt(self, tx_hash: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.rpc_call("eth_getTransactionReceipt", [tx_hash])
            if receipt:
                if int(receipt["status"], 16) != 1:
                    raise RuntimeError(f"payment {tx_hash} reverted")
                return receipt
            if time.monotonic() > deadline:
                raise TimeoutError(f"payment {tx_hash} not mined")
            time.sleep(POLL_SECONDS)

    def wait_paid(self, booking_id: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while True:
            status = self.api("GET", f"/api/bookings/{booking_id}/").json()["status"]
            if status == "PAID":
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"booking {booking_id} still {status}")
            time.sleep(POLL_SECONDS)

    def submit(self, booking_id: str, tx_hash: str) -> dict:
        return self.api("POST", f"/api/bookings/{booking_id}/submit-transaction/", {"tx_hash": tx_hash}).json()


def run_payment(client: Client, watcher: BlockWatcher, mode: str, booking_id: str, auth: dict) -> dict:
    tx_hash = client.pay(auth)
    if mode == "scanner":
        paid_at = client.wait_paid(booking_id)
        receipt = client.wait_receipt(tx_hash)
    else:
        receipt = client.wait_receipt(tx_hash)
        client.submit(booking_id, tx_hash)
        # The submit answer carries the booking's status; the clock stops when a plain GET shows PAID.
        paid_at = client.wait_paid(booking_id)
    block = int(receipt["blockNumber"], 16)
    block_timestamp = int(client.rpc_call("eth_getBlockByNumber", [hex(block), False])["timestamp"], 16)
    mined_at = watcher.mined_at(block)
    return {"latency": paid_at - mined_at, "from_timestamp": paid_at - block_timestamp, "tx": tx_hash}


def run_mode(mode: str, clients: list[Client], watcher: BlockWatcher, flows: int) -> list[dict]:
    prepared = [(c, *c.prepare()) for c in clients]
    per_flow = [prepared[i::flows] for i in range(flows)]

    def flow(items):
        out = []
        for client, booking_id, auth in items:
            out.append(run_payment(client, watcher, mode, booking_id, auth))
        return out

    with ThreadPoolExecutor(flows) as pool:
        return [r for part in pool.map(flow, per_flow) for r in part]


def summary(name: str, results: list[dict], target: float) -> bool:
    latencies = [r["latency"] for r in results]
    stamps = [r["from_timestamp"] for r in results]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    ok = p95 <= target
    say(f"{name}: n={len(latencies)}  p50 {p50 * 1000:.0f} ms  p95 {p95 * 1000:.0f} ms"
        f"  max {max(latencies) * 1000:.0f} ms"
        f"   (target p95 <= {target * 1000:.0f} ms: {'met' if ok else 'MISSED'})")
    say(f"    measured from the block timestamp (1 s resolution): p50 {percentile(stamps, 50) * 1000:.0f} ms"
        f"  p95 {percentile(stamps, 95) * 1000:.0f} ms")
    return ok


def main() -> int:
    args = parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # no stale broker messages from an earlier run
    chain = BenchChain(block_time=1)
    state_dir = Path(tempfile.mkdtemp(prefix="bookme-bench-latency-"))
    system = None
    t0 = time.perf_counter()
    chain.start()
    watcher = BlockWatcher(chain)
    try:
        env = configure_environment(chain, database=args.database, redis_url=redis_url)
        recreate_database(args.database)
        setup_django()
        from escrow.wallet_tokens import issue_wallet_token

        customers = bench_addresses("latency-customer", 2 * args.payments)
        chain.fund_customers(customers)
        system = System(env, state_dir)
        system.start_all()
        system.wait_ready()
        say(f"system up (worker, beat, gunicorn on {system.base_url}; anvil {chain.url} mining 1 block/s) "
            f"in {time.perf_counter() - t0:.1f} s")
        watcher.start()
        providers = bench_addresses("latency-provider", 2 * args.payments)
        clients = [
            Client(system, chain, c, issue_wallet_token(c).token, p) for c, p in zip(customers, providers, strict=False)
        ]
        scanner_results = run_mode("scanner", clients[: args.payments], watcher, args.flows)
        fast_results = run_mode("fast path", clients[args.payments:], watcher, args.flows)

        from django.db.models import Count

        from chain_events.models import ChainEvent
        from escrow.models import Booking

        paid = Booking.objects.filter(status="PAID").count()
        sources = dict(ChainEvent.objects.values_list("source").annotate(n=Count("id")))
        say("")
        overrides = {
            k: v for k, v in os.environ.items() if k.startswith(("CHAIN_SCAN_", "SCAN_", "CHAIN_CONFIRMATIONS"))
        }
        say(f"== latency: payment block mined -> booking PAID via the API ({args.payments} payments per mode, "
            f"{args.flows} concurrent flows, anvil --block-time 1, "
            f"{'settings: ' + str(overrides) if overrides else 'default settings'}) ==")
        ok_a = summary("(a) scanner alone              ", scanner_results, TARGET_SCANNER_P95)
        ok_b = summary("(b) submit-transaction on receipt", fast_results, TARGET_FAST_PATH_P95)
        say(f"bookings PAID: {paid} of {2 * args.payments}; events stored by source: {sources}")
        return 0 if ok_a and ok_b and paid == 2 * args.payments else 1
    finally:
        watcher.stopped.set()
        if system is not None:
            codes = system.stop()
            if any(code not in (0, None) for code in codes.values()) or args.keep_logs:
                say(f"process exit codes {codes}; logs in {state_dir}")
        chain.stop()


if __name__ == "__main__":
    sys.exit(main())
