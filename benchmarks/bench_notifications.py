"""Notifications benchmark: booking status changes pushed to WebSocket clients and webhooks.

    .venv/bin/python benchmarks/bench_notifications.py                       # 1,000 clients, 100/s, 30 s
    .venv/bin/python benchmarks/bench_notifications.py --clients 50 --rate 20 --seconds 5   # quick run

The push side as the Procfile runs it, against its own database `bookme_bench_notifications` and
Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/9): the outbox relay
(`manage.py relay_notifications`), the ASGI server (uvicorn `bookme.asgi:application`, Redis
channel layer) and a Celery worker delivering webhooks. No chain: the status changes are made by
the real status-change path (escrow.state.transition, each change its own committed transaction;
the outbox trigger writes the notification) in a driver process, which records each commit's
wall time. PENDING_PAYMENT <-> EXPIRED is the move it makes: a legal pair the API and the
expiry step make every day, so each booking can change any number of times.

1. N WebSocket clients (asyncio + websockets, in this process), each signed in as its own wallet
   (tokens issued directly with escrow.wallet_tokens, not through SIWE: signing 1,000 messages is
   not what is measured), connect and authenticate; bookings pair the wallets (customer, provider),
   so every change is expected by exactly two clients.
2. R changes per second for D seconds. Per client message: commit -> receipt latency, live
   frames apart from those a heartbeat brought back from the outbox (the layer dropped or delayed
   the live one); expected vs received (lost must be 0), duplicates (must be 0), counted only once
   every client has had a heartbeat that covers the run's last seq (after it, nothing of the run
   can still arrive, nor arrive twice); RSS of uvicorn and the relay.
3. Webhooks: one endpoint (http://127.0.0.1, allowed by WEBHOOK_ALLOW_HTTP and
   WEBHOOK_ALLOW_PRIVATE_ADDRESSES) to a local aiohttp receiver that dedups by event id. During
   step 2 the deliveries keep pace with the changes (commit -> receipt latency); then a burst of
   --webhook-burst changes made as fast as one connection commits them measures deliveries per
   second, beside --noop-tasks of Celery's built-in no-op task (celery.accumulate) through the
   same broker and worker: the rate the worker reaches with nothing to do.
Exit status 1 when a message was lost or duplicated, or a webhook is missing.
Environment: BENCH_POSTGRES_URL, BENCH_REDIS_URL.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    OPERATOR_KEY,
    SIGNER_KEY,
    RssSampler,
    bench_addresses,
    database_url,
    percentile,
    recreate_database,
    say,
    setup_django,
)
from benchmarks._processes import (  # noqa: E402
    ProcessGroup,
    asgi_command,
    relay_command,
    role_environment,
    without_sending_keys,
    worker_command,
)
from contracts.anvil import find_free_port  # noqa: E402

DATABASE = "bookme_bench_notifications"
BIN = Path(sys.executable).parent
CONNECT_CONCURRENCY = 50
# A frame that arrives this close before a heartbeat frame, after the previous heartbeat's
# latest_seq, was sent by that heartbeat's outbox read (it holds the socket while it reads and
# sends, so a live frame cannot come between): counted as recovered, not live.
RECOVERED_WINDOW_SECONDS = 0.02


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients, one wallet each (default 1000)")
    parser.add_argument("--rate", type=float, default=100.0, help="status changes per second (default 100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the changes go on (default 30)")
    parser.add_argument("--webhook-burst", type=int, default=1000, help="changes in the webhook burst (default 1000)")
    parser.add_argument("--noop-tasks", type=int, default=1000, help="Celery no-op tasks, the baseline (default 1000)")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="Celery worker threads (Procfile default 4)")
    parser.add_argument("--database", default=DATABASE)
    return parser.parse_args()


def configure_environment(database: str, redis_url: str) -> None:
    """This process's and its children's settings: own database and Redis, no chain (none is used)."""
    os.environ.update({
        "BOOKME_READ_ENV_FILES": "0",
        "DJANGO_SETTINGS_MODULE": "bookme.settings",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_DEBUG": "false",
        "DJANGO_HTTPS": "false",
        "DATABASE_URL": database_url(database),
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"bench-{database}",
        "CHANNEL_LAYER_PREFIX": f"bench-{database}",
        # Nothing here talks to a chain; the start-up identity check logs it as skipped.
        "CHAIN_RPC_URLS": "http://127.0.0.1:9",
        "CHAIN_ID": "31337",
        "ESCROW_CONTRACT_ADDRESS": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
        "USDC_CONTRACT_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "SIGNER_PRIVATE_KEY": SIGNER_KEY,
        "RPC_TIMEOUT_SECONDS": "1",
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    })


# -- data ------------------------------------------------------------------------------------------
def create_wallets_and_bookings(count: int) -> tuple[list[str], list[str], dict[str, tuple[str, str]]]:
    """`count` wallets with a token each; bookings pairing them (customer 2i, provider 2i+1)."""
    from django.utils import timezone
    from eth_utils import keccak

    from escrow.models import Booking, BookingStatus
    from escrow.wallet_tokens import issue_wallet_token

    wallets = bench_addresses("notifications", count + count % 2)
    tokens = [issue_wallet_token(wallet).token for wallet in wallets[:count]]
    scheduled_at = timezone.now() + timedelta(days=7)
    bookings = [
        Booking(customer_address=wallets[i], provider_address=wallets[i + 1], amount=25_000_000, platform_fee_rate=1000,
                scheduled_at=scheduled_at, status=BookingStatus.PENDING_PAYMENT, description="bench")
        for i in range(0, len(wallets), 2)
    ]
    for booking in bookings:
        booking.chain_booking_id = "0x" + keccak(text=str(booking.uuid)).hex()
    Booking.objects.bulk_create(bookings)
    parties = {str(b.uuid): (b.customer_address, b.provider_address) for b in bookings}
    return wallets[:count], tokens, parties


def drive(environment: dict, booking_uuids: list[str], changes: int, rate: float | None, queue) -> None:
    """The driver process: `changes` status changes round robin over the bookings through
    escrow.state.transition, each committed on its own, at `rate` per second (None: at once).
    Puts [(booking uuid, wall time of the commit)] in commit order, then the seconds it lagged."""
    os.environ.update(environment)
    import django

    django.setup()
    from django.db import transaction

    from escrow.models import Booking, BookingStatus, StatusSource
    from escrow.state import transition

    ids = dict(Booking.objects.filter(uuid__in=booking_uuids).values_list("uuid", "id"))
    order = [ids[uuid.UUID(u)] for u in booking_uuids]
    commits, worst_lag, started = [], 0.0, time.perf_counter()
    for i in range(changes):
        if rate:
            due = started + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            worst_lag = max(worst_lag, -wait)
        with transaction.atomic():
            booking = Booking.objects.select_for_update().get(pk=order[i % len(order)])
            if booking.status == BookingStatus.PENDING_PAYMENT:
                transition(booking, BookingStatus.EXPIRED, source=StatusSource.RECONCILIATION, note="bench")
            else:
                transition(booking, BookingStatus.PENDING_PAYMENT, source=StatusSource.API, note="bench")
        commits.append((booking_uuids[i % len(order)], time.time()))
    queue.put((commits, worst_lag, time.perf_counter() - started))


def run_driver(booking_uuids: list[str], changes: int, rate: float | None):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    environment = {k: v for k, v in os.environ.items() if k in DRIVER_ENV}
    process = context.Process(target=drive, args=(environment, booking_uuids, changes, rate, queue))
    process.start()
    return process, queue


DRIVER_ENV = ("BOOKME_READ_ENV_FILES", "DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_HTTPS",
              "DATABASE_URL", "REDIS_URL", "CACHE_KEY_PREFIX", "CHANNEL_LAYER_PREFIX", "CHAIN_RPC_URLS", "CHAIN_ID",
              "ESCROW_CONTRACT_ADDRESS", "USDC_CONTRACT_ADDRESS", "SIGNER_PRIVATE_KEY", "LOG_LEVEL")


async def wait_driver(process, queue):
    while process.is_alive() and queue.empty():
        await asyncio.sleep(0.05)
    if queue.empty():
        raise RuntimeError(f"the driver process ended without results (exit code {process.exitcode})")
    result = queue.get()
    process.join()
    return result


# -- the system under test -------------------------------------------------------------------------
class Processes(ProcessGroup):
    """relay, uvicorn and a Celery worker, started like the Procfile, each in its own session."""

    def __init__(self, worker_concurrency: int):
        super().__init__(Path(tempfile.mkdtemp(prefix="bench-notifications-")))
        self.asgi_port = find_free_port()
        self.worker_concurrency = worker_concurrency

    def start_all(self) -> Processes:
        self.start("relay", relay_command(), without_sending_keys(os.environ))
        self.start("asgi", asgi_command(self.asgi_port), without_sending_keys(os.environ))
        # Only the worker holds the operator key (anvil's test key; it sends nothing here).
        worker = role_environment({**os.environ, "OPERATOR_PRIVATE_KEY": OPERATOR_KEY}, "worker")
        node = f"bench-notifications-{os.getpid()}"
        self.start("worker", worker_command(node, self.worker_concurrency, loglevel="WARNING"), worker)
        return self

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")


# -- the webhook receiver ----------------------------------------------------------------------------
class Receiver:
    """Answers 200 to every POST; keeps the first receipt time per event id and counts repeats."""

    def __init__(self):
        self.first_seen: dict[str, tuple[str, int, float]] = {}  # event id -> (booking, seq, time)
        self.repeats = 0

    async def start(self, port: int) -> None:
        from aiohttp import web

        async def hook(request):
            event = json.loads(await request.read())
            if event["id"] in self.first_seen:
                self.repeats += 1
            else:
                self.first_seen[event["id"]] = (event["data"]["booking"], event["data"]["seq"], time.time())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    def received_since(self, started: float) -> list[float]:
        return sorted(t for _, _, t in self.first_seen.values() if t >= started)


# -- WebSocket clients -----------------------------------------------------------------------------
class Clients:
    def __init__(self, url: str, wallets: list[str], tokens: list[str]):
        self.url, self.wallets, self.tokens = url, wallets, tokens
        self.received: list[tuple[int, int, str, float]] = []  # (client, seq, booking, time)
        self.recovered: set[tuple[int, int]] = set()  # (client, seq) sent by a heartbeat's outbox read
        self.replayed: set[tuple[int, int]] = set()  # (client, seq) replayed after a reconnect
        self.errors: list[str] = []
        self.server_closes: list[str] = []  # sockets the server closed or dropped (each reconnected)
        self.heartbeats: dict[int, list[int]] = defaultdict(list)  # client -> latest_seq of each heartbeat
        self.sockets = []
        self.stopping = False

    async def connect_all(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.ready = [asyncio.get_running_loop().create_future() for _ in self.tokens]
        self.tasks = [asyncio.create_task(self.client(i, gate)) for i in range(len(self.tokens))]
        done, _ = await asyncio.wait([asyncio.gather(*self.ready)], timeout=120)
        if not done:
            raise RuntimeError(f"clients did not all get 'ready' ({sum(f.done() for f in self.ready)} did)")

    async def client(self, index: int, gate: asyncio.Semaphore) -> None:
        """One client as the reference client behaves: auth with the last seq it saw; when the
        server drops the socket, reconnect with it (the stream replays what was missed)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        last_seq = None
        covered = 0  # the seq the last heartbeat (or replay) said this socket has everything through
        while not self.stopping:
            try:
                async with gate:
                    socket = await connect(self.url, ping_interval=None, max_queue=None, open_timeout=30)
                    await socket.send(json.dumps({"type": "auth", "token": self.tokens[index], "since": last_seq}))
                self.sockets.append(socket)
                run: list[tuple[int, float]] = []  # (seq, time) of the events since the last other frame
                async for text in socket:
                    now = time.time()
                    frame = json.loads(text)
                    kind = frame.get("type")
                    if kind == "event":
                        self.received.append((index, frame["seq"], frame["booking"], now))
                        last_seq = max(last_seq or 0, frame["seq"])
                        run.append((frame["seq"], now))
                        continue
                    if kind == "ready":
                        last_seq = frame["latest_seq"] if last_seq is None else last_seq
                        covered = max(covered, last_seq)
                        if not self.ready[index].done():
                            self.ready[index].set_result(True)
                    elif kind == "replayed":
                        self.replayed.update((index, seq) for seq, _ in run)
                        covered = max(covered, frame["through"])
                    elif kind == "heartbeat":
                        self.recovered.update(
                            (index, seq) for seq, at in run
                            if seq > covered and now - at <= RECOVERED_WINDOW_SECONDS
                        )
                        self.heartbeats[index].append(frame["latest_seq"])
                        covered = max(covered, frame["latest_seq"])
                    elif kind == "error":
                        self.errors.append(f"client {index}: {frame}")
                    run = []
                self.server_closes.append(f"client {index}: closed {socket.close_code} {socket.close_reason}")
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                if self.stopping:
                    return
                self.server_closes.append(f"client {index}: {exc!r}")
            await asyncio.sleep(0.2)

    async def settle(self, top_seq: int, heartbeat_seconds: float, processes: Processes) -> float:
        """Wait until every client has had a heartbeat saying it has everything through `top_seq`
        (the run's last seq): a socket that missed a live frame gets it from the outbox at that
        heartbeat, and nothing at or below it is sent afterwards, so lost and duplicates are final.
        Gives up after three heartbeat periods. Returns the seconds waited."""
        started = time.monotonic()
        deadline = started + 3 * heartbeat_seconds + 10
        while time.monotonic() < deadline:
            processes.check_alive()
            if all(self.heartbeats[i] and self.heartbeats[i][-1] >= top_seq for i in range(len(self.tokens))):
                break
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def close(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)


def expected_messages(commits, parties, wallets) -> int:
    clients_of = defaultdict(int)
    for wallet in wallets:
        clients_of[wallet] += 1
    return sum(clients_of[parties[booking][0]] + clients_of[parties[booking][1]] for booking, _ in commits)


def client_latencies(received, commits, since: float) -> tuple[dict[tuple[int, int], float], int, int]:
    """({(client, seq): commit -> receipt seconds}, unique messages, duplicates). A client's k-th
    event of a booking is the booking's k-th change (the stream is in seq order)."""
    commit_times = defaultdict(list)
    for booking, at in commits:
        commit_times[booking].append(at)
    seen, counts, latencies, duplicates = set(), defaultdict(int), {}, 0
    for client, seq, booking, at in sorted(received, key=lambda r: (r[0], r[1])):
        if (client, seq) in seen:
            duplicates += 1
            continue
        seen.add((client, seq))
        k = counts[(client, booking)]
        counts[(client, booking)] += 1
        if k < len(commit_times[booking]) and commit_times[booking][k] >= since:
            latencies[(client, seq)] = at - commit_times[booking][k]
    return latencies, len(seen), duplicates


async def wait_for(predicate, timeout: float, processes: Processes) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        processes.check_alive()
        await asyncio.sleep(0.1)
    return predicate()


async def wait_progress(count, target: int, patience: float, processes: Processes) -> bool:
    """Wait until count() reaches target, giving up once it has not grown for `patience` seconds."""
    last, since = count(), time.monotonic()
    while last < target:
        processes.check_alive()
        await asyncio.sleep(0.2)
        if count() != last:
            last, since = count(), time.monotonic()
        elif time.monotonic() - since > patience:
            return False
    return True


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def noop_rate(count: int, processes: Processes) -> float:
    """Tasks per second the worker runs Celery's built-in no-op task (sent at once, drained)."""
    import redis
    from django.conf import settings

    from bookme.celery import app

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    started = time.perf_counter()
    for i in range(count):
        app.send_task("celery.accumulate", args=(i,), ignore_result=True)
    drained = await wait_for(lambda: broker.llen("celery") == 0 and broker.hlen("unacked") == 0, 120, processes)
    if not drained:
        raise RuntimeError(f"no-op tasks not drained in 120 s ({broker.llen('celery')} queued)")
    return count / (time.perf_counter() - started)


def prepare(args) -> tuple[list[str], list[str], dict[str, tuple[str, str]], int]:
    """Own database and Redis, wallets, tokens, bookings, the webhook endpoint (before any event loop:
    the ORM is synchronous)."""
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
    configure_environment(args.database, redis_url)
    # 1,000 sockets on each side of the connection: raise the open-files limit (children inherit it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    say(f"database {args.database}: creating and migrating")
    recreate_database(args.database)
    setup_django()
    from webhooks.models import WebhookEndpoint

    wallets, tokens, parties = create_wallets_and_bookings(args.clients)
    receiver_port = find_free_port()
    WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{receiver_port}/hook", description="bench receiver")
    return wallets, tokens, parties, receiver_port


async def main_async(args, wallets, tokens, parties, receiver_port) -> int:
    from django.conf import settings

    booking_uuids = list(parties)
    receiver = Receiver()
    await receiver.start(receiver_port)

    processes = Processes(args.worker_concurrency).start_all()
    try:
        ws_url = f"ws://127.0.0.1:{processes.asgi_port}/ws/bookings/"
        if not await wait_for(lambda: _port_open(processes.asgi_port), 60, processes):
            raise RuntimeError("uvicorn did not listen within 60 s:\n" + processes.log("asgi")[-3000:])
        say(f"system up: relay, uvicorn on {processes.asgi_port}, worker ({args.worker_concurrency} threads); "
            f"logs in {processes.log_dir}")
        clients = Clients(ws_url, wallets, tokens)
        connect_started = time.perf_counter()
        await clients.connect_all()
        say(f"{len(tokens)} clients connected and authenticated in {time.perf_counter() - connect_started:.1f} s "
            f"({len(booking_uuids)} bookings, 2 clients each)")

        # -- step 2: paced changes --------------------------------------------------------------
        changes = int(args.rate * args.seconds)
        say(f"driving {changes} status changes at {args.rate:g}/s for {args.seconds:g} s")
        samplers = {name: RssSampler(processes.procs[name].pid, interval=0.5) for name in ("asgi", "relay")}
        for sampler in samplers.values():
            sampler.__enter__()
        paced_start = time.time()
        process, queue = run_driver(booking_uuids, changes, args.rate)
        commits, worst_lag, drive_seconds = await wait_driver(process, queue)
        expected = expected_messages(commits, parties, wallets)
        heartbeat_seconds = settings.STREAM_HEARTBEAT_SECONDS
        top_seq = await wait_published(processes)
        settled = await clients.settle(top_seq, heartbeat_seconds, processes)
        await wait_progress(lambda: len(receiver.first_seen), changes, 30, processes)
        for sampler in samplers.values():
            sampler.__exit__(None, None, None)
        latencies, unique, duplicates = client_latencies(clients.received, commits, paced_start)
        recovered = [at for key, at in latencies.items() if key in clients.recovered]
        replayed = [at for key, at in latencies.items() if key in clients.replayed]
        live = [at for key, at in latencies.items() if key not in clients.recovered and key not in clients.replayed]
        hook_latency = _webhook_latencies(receiver, commits)
        paced_hooks = len(receiver.first_seen)

        say(f"\nWebSocket stream ({len(tokens)} clients, {changes} changes in {drive_seconds:.1f} s = "
            f"{changes / drive_seconds:.0f}/s, driver at most {worst_lag * 1000:.0f} ms behind schedule):")
        say(f"  commit -> client, live: {spread(live)}")
        say(f"  commit -> client, recovered by a heartbeat from the outbox (live frame dropped or late; told "
            f"apart by arriving next to a heartbeat, the server's count below is exact): {spread(recovered)}")
        if replayed:
            say(f"  commit -> client, replayed after a reconnect: {spread(replayed)}")
        sent = await asyncio.to_thread(events_sent_by_path, processes.asgi_port)
        say(f"  event frames the server counted by path (bookme_stream_events_sent_total): {sent or 'unavailable'}")
        say(f"  messages expected {expected}, received {unique}, lost {expected - unique}, duplicates {duplicates} "
            f"(counted {settled:.1f} s after the last change, once every client's heartbeat covered seq {top_seq}; "
            f"heartbeat every {heartbeat_seconds:g} s)")
        say(f"  server RSS: uvicorn {samplers['asgi'].start:.0f} -> peak {samplers['asgi'].peak:.0f} MiB, "
            f"relay {samplers['relay'].start:.0f} -> peak {samplers['relay'].peak:.0f} MiB")
        if clients.errors:
            say(f"  error frames: {len(clients.errors)}, first: {clients.errors[0]}")
        if clients.server_closes:
            say(f"  sockets the server dropped (the client reconnected with its last seq): "
                f"{len(clients.server_closes)}, first: {clients.server_closes[0]}")
        say(f"webhooks during the paced run: {paced_hooks} of {changes} delivered, commit -> receiver "
            f"p50 {ms(percentile(hook_latency, 50))}, p95 {ms(percentile(hook_latency, 95))}")

        # -- step 3: webhook burst and the no-op baseline -----------------------------------------
        burst_started = time.time()
        process, queue = run_driver(booking_uuids, args.webhook_burst, None)
        burst_commits, _, burst_seconds = await wait_driver(process, queue)
        burst_expected = expected_messages(burst_commits, parties, wallets)
        # Every delivery, the paced run's still queued ones too: the worker is saturated from here on.
        complete = await wait_for(lambda: len(receiver.first_seen) >= changes + args.webhook_burst, 600, processes)
        times = receiver.received_since(burst_started)
        hook_rate = len(times) / (times[-1] - burst_started) if times else 0.0
        baseline = await noop_rate(args.noop_tasks, processes)
        await clients.settle(await wait_published(processes), heartbeat_seconds, processes)
        _, unique_all, duplicates_all = client_latencies(clients.received, commits + burst_commits, 0)
        lost_all = expected + burst_expected - unique_all
        say(f"\nwebhook burst: {args.webhook_burst} changes committed in {burst_seconds:.1f} s; from then on "
            f"{len(times)} deliveries received (the paced run's backlog included)"
            f"{'' if complete else ' (INCOMPLETE after 600 s)'}")
        say(f"  webhook deliveries/s {hook_rate:.0f}   Celery no-op tasks/s {baseline:.0f} "
            f"(same worker, {args.worker_concurrency} threads)   ratio {hook_rate / baseline:.2f}")
        say(f"  redelivered event ids seen again by the receiver: {receiver.repeats}")
        say(f"whole run: messages lost {lost_all}, duplicates {duplicates_all} (paced + burst, every client); "
            f"sockets dropped by the server {len(clients.server_closes)}")
        if lost_all:
            say(await asyncio.to_thread(describe_losses, clients.received, wallets, clients.heartbeats))
        await clients.close()
        ok = lost_all == 0 and duplicates_all == 0 and complete and paced_hooks >= changes
        say("PASS: nothing lost, nothing twice" if ok else "FAILED: see the figures above")
        return 0 if ok else 1
    finally:
        processes.stop()
        await receiver.runner.cleanup()


def spread(latencies: list[float]) -> str:
    if not latencies:
        return "none"
    return (f"p50 {ms(percentile(latencies, 50))}, p95 {ms(percentile(latencies, 95))}, max {ms(max(latencies))} "
            f"({len(latencies)} messages)")


async def wait_published(processes: Processes) -> int:
    """The outbox's newest seq once the relay has numbered every notification."""
    from django.db import close_old_connections

    from notifications.models import Notification
    from notifications.outbox import latest_seq

    def unpublished() -> int:
        close_old_connections()
        return Notification.objects.filter(seq__isnull=True).count()

    while await asyncio.to_thread(unpublished):
        processes.check_alive()
        await asyncio.sleep(0.2)
    return await asyncio.to_thread(latest_seq)


def events_sent_by_path(port: int) -> dict[str, int]:
    """The ASGI process's own count of event frames by path (its /metrics), {} when unreachable."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        sample.labels["path"]: int(sample.value)
        for family in text_string_to_metric_families(text) if family.name == "bookme_stream_events_sent"
        for sample in family.samples if sample.name.endswith("_total")
    }


def describe_losses(received, wallets: list[str], heartbeats: dict[int, list[int]]) -> str:
    """Which clients miss which seqs (from the outbox): the first clue when something was lost."""
    from django.db import close_old_connections

    from notifications.models import Notification

    close_old_connections()
    expected = defaultdict(set)
    for seq, customer, provider in Notification.objects.values_list("seq", "customer_address", "provider_address"):
        expected[customer].add(seq)
        expected[provider].add(seq)
    got = defaultdict(set)
    for client, seq, _, _ in received:
        got[client].add(seq)
    short = {i: sorted(expected[w] - got[i]) for i, w in enumerate(wallets) if expected[w] - got[i]}
    if not short:
        return "  (every client has every seq of its wallet in the outbox)"
    first = next(iter(short))
    return (f"  clients missing messages: {len(short)}, of which {sum(1 for i in short if not got[i])} received none; "
            f"client {first} misses seqs {short[first][:10]}, got {sorted(got[first])[:10]}, heartbeats said "
            f"latest_seq {heartbeats[first][:12]}")


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _webhook_latencies(receiver: Receiver, commits) -> list[float]:
    """Commit -> receiver seconds: the k-th delivery of a booking (by seq) is its k-th change."""
    by_booking = defaultdict(list)
    for booking, seq, at in receiver.first_seen.values():
        by_booking[booking].append((seq, at))
    commit_times = defaultdict(list)
    for booking, at in commits:
        commit_times[booking].append(at)
    latencies = []
    for booking, deliveries in by_booking.items():
        for k, (_, at) in enumerate(sorted(deliveries)):
            if k < len(commit_times[booking]):
                latencies.append(at - commit_times[booking][k])
    return latencies or [float("nan")]


def _stop_on_sigterm(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally blocks: the servers are stopped


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args()
    return asyncio.run(main_async(args, *prepare(args)))


if __name__ == "__main__":
    sys.exit(main())
