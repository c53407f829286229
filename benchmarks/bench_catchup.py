"""Catch-up benchmark: 100,000 BookingCreatedAndPaid logs scanned and applied end to end.

    .venv/bin/python benchmarks/bench_catchup.py              # 100,000 events
    .venv/bin/python benchmarks/bench_catchup.py --events 5000  # quick run

What it does, all against real parts:
1. its own anvil (automine off, big blocks) with the contracts, its own database
   `bookme_bench_catchup` (dropped, created, migrated);
2. N PENDING_PAYMENT bookings (with their payment nonce rows) inserted in bulk, and N
   createAndPayBooking transactions for them mined on anvil, --per-block per block;
3. the real scanner (chain_events.scanner) run in this process from the deployment block to the
   head: eth_getLogs, decode, store, apply (bookings → PAID, audit rows, nonces), cursor; the
   RSS of this process is sampled during the scan;
4. in the same run, over the same block range: (i) web3.py's contract-event helper
   `contract.events.BookingCreatedAndPaid.get_logs(from_block=..., to_block=...)` and (ii) a
   PostgreSQL COPY of the same event rows into a table made LIKE the event table (same
   columns, indexes and constraints);
5. prints applied events/s, the two comparison rates and ratios, the RSS start/peak/end, and
   the CPU each part used per applied event during the scan (this process, PostgreSQL's
   processes, anvil; /proc): with the machine's cores, the rate that work per event allows
   at best, whatever the overlap.

Targets (issue 4): >= 10,000 events/s applied, >= 8x (i), >= 0.33x (ii), RSS flat.
Environment: BENCH_POSTGRES_URL (server, default postgres://postgres@127.0.0.1:5432),
BENCH_REDIS_URL (default redis://127.0.0.1:6379/13).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import uuid as uuid_lib
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    BenchChain,
    CpuMeter,
    Payment,
    RssSampler,
    bench_addresses,
    configure_environment,
    insert_bookings,
    recreate_database,
    rss_mib,
    say,
    setup_django,
)

DATABASE = "bookme_bench_catchup"
TARGET_RATE = 10_000
TARGET_VS_WEB3 = 8.0
TARGET_VS_COPY = 0.33


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="payments to mine and scan (default 100000)")
    parser.add_argument("--per-block", type=int, default=2000, help="payments per block (default 2000)")
    parser.add_argument("--customers", type=int, default=200, help="distinct paying wallets (default 200)")
    parser.add_argument("--providers", type=int, default=500, help="distinct providers (default 500)")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the scan to FILE")
    return parser.parse_args()


# -- data --------------------------------------------------------------------------------------
def make_payments(args, expiry: int) -> list[Payment]:
    customers = bench_addresses("customer", args.customers)
    providers = bench_addresses("provider", args.providers)
    return [
        Payment(
            uuid=uuid_lib.uuid4(),
            customer=customers[i % len(customers)],
            provider=providers[(i * 7) % len(providers)],
            amount=1_000_000 + (i % 997) * 10_000,
            nonce=10**12 + i,
            expiry=expiry,
        )
        for i in range(args.events)
    ]


def mine_payments(chain: BenchChain, payments: list[Payment], per_block: int) -> tuple[int, int]:
    """Send every payment (batched JSON-RPC, automine off) and mine per_block per block."""
    chain.fund_customers(sorted({p.customer for p in payments}))
    next_nonce = dict.fromkeys({p.customer for p in payments}, 2)  # after mint + approve
    chain.call("evm_setAutomine", [False])
    first_block = chain.block_number() + 1
    last_hashes: list[str] = []
    for start in range(0, len(payments), per_block):
        calls = []
        for payment in payments[start:start + per_block]:
            nonce = next_nonce[payment.customer]
            next_nonce[payment.customer] = nonce + 1
            calls.append(("eth_sendTransaction", [chain.payment_transaction(payment, nonce=nonce)]))
        last_hashes = chain.batch(calls)
        chain.call("evm_mine")
        done = start + len(calls)
        if done % max(per_block, len(payments) // 10) < per_block:
            say(f"  ... {done:,} payments mined (anvil RSS {rss_mib(chain.node.process.pid):,.0f} MiB)")
    # A loaded machine's anvil may leave part of a big batch out of the block it mines, and
    # turning automine back on does not mine what is already pending: mine until the pool is empty.
    while int(chain.call("txpool_status")["pending"], 16):
        chain.call("evm_mine")
    chain.call("evm_setAutomine", [True])
    last_block = chain.block_number()
    # Every payment must have succeeded, or the scan would measure something else.
    chain.wait_receipts(last_hashes[-5:])
    logs = chain.call(
        "eth_getLogs", [{"fromBlock": hex(first_block), "toBlock": hex(last_block), "address": chain.escrow}],
    )
    if len(logs) != len(payments):
        raise SystemExit(f"only {len(logs)} of {len(payments)} payments produced a log")
    return first_block, last_block


# -- the measured scan ---------------------------------------------------------------------------
def run_scanner_to_head(head: int) -> dict:
    """Run the real scanner until its cursor is at `head`; return what it reports."""
    from chain_events import scanner
    from chain_events.models import SyncCursor

    rounds = 0
    results = []
    while True:
        rounds += 1
        results.append(scanner.scan_chain())
        cursor = SyncCursor.objects.get()
        if cursor.last_block >= head:
            return {"rounds": rounds, "results": results, "cursor": cursor.last_block}
        if rounds > 10_000:
            raise RuntimeError(f"scanner stuck at block {cursor.last_block} (head {head})")


def check_applied(expected: int) -> dict:
    from django.db.models import Count

    from chain_events.models import ChainEvent
    from escrow.models import Booking, BookingStatusChange, SignatureNonce

    statuses = dict(Booking.objects.values_list("status").annotate(n=Count("id")))
    events = dict(ChainEvent.objects.values_list("status").annotate(n=Count("id")))
    facts = {
        "bookings_paid": statuses.get("PAID", 0),
        "events_processed": events.get("PROCESSED", 0),
        "events_other": sum(n for s, n in events.items() if s != "PROCESSED"),
        "chain_status_changes": BookingStatusChange.objects.filter(source="chain").count(),
        "nonces_consumed": SignatureNonce.objects.filter(consumed_at__isnull=False).count(),
        "attention": Booking.objects.filter(needs_attention=True).count(),
    }
    problems = [
        f"{name}={facts[name]} (expected {expected})"
        for name in ("bookings_paid", "events_processed", "chain_status_changes", "nonces_consumed")
        if facts[name] != expected
    ] + [f"{name}={facts[name]} (expected 0)" for name in ("events_other", "attention") if facts[name]]
    if problems:
        raise SystemExit("scan did not apply every payment exactly once: " + "; ".join(problems))
    return facts


# -- comparisons ----------------------------------------------------------------------------------
def web3_get_logs_rate(chain: BenchChain, first_block: int, last_block: int, expected: int) -> tuple[float, float]:
    """(i): web3.py's contract-event get_logs over the same range; returns (events/s, seconds)."""
    from web3 import Web3

    from contracts.artifacts import escrow_abi

    w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 600}))
    contract = w3.eth.contract(address=chain.escrow, abi=escrow_abi())
    started = time.perf_counter()
    entries = contract.events.BookingCreatedAndPaid.get_logs(from_block=first_block, to_block=last_block)
    seconds = time.perf_counter() - started
    if len(entries) != expected:
        raise SystemExit(f"web3 get_logs returned {len(entries)} events, expected {expected}")
    return len(entries) / seconds, seconds


def raw_get_logs_seconds(chain: BenchChain, first_block: int, last_block: int) -> float:
    """The node's share: raw eth_getLogs of the same range, JSON parsed, nothing decoded."""
    started = time.perf_counter()
    logs = chain.call(
        "eth_getLogs", [{"fromBlock": hex(first_block), "toBlock": hex(last_block), "address": chain.escrow}],
    )
    seconds = time.perf_counter() - started
    assert logs
    return seconds


def copy_rate(expected: int) -> tuple[float, float]:
    """(ii): COPY the stored event rows into a table LIKE the event table; returns (rows/s, seconds)."""
    from django.db import connection

    from chain_events.models import ChainEvent

    table = ChainEvent._meta.db_table
    columns = [f.column for f in ChainEvent._meta.concrete_fields if f.column != "id"]
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy_event")
        cursor.execute(f"CREATE TABLE bench_copy_event (LIKE {table} INCLUDING ALL)")
        cursor.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY block_number, log_index")
        rows = cursor.fetchall()
        raw = cursor.cursor
        started = time.perf_counter()
        with raw.copy(f"COPY bench_copy_event ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        seconds = time.perf_counter() - started
        cursor.execute("SELECT count(*) FROM bench_copy_event")
        copied = cursor.fetchone()[0]
        cursor.execute("DROP TABLE bench_copy_event")
    if copied != expected:
        raise SystemExit(f"COPY wrote {copied} rows, expected {expected}")
    return copied / seconds, seconds


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    args = parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    gas_limit = max(30_000_000, args.per_block * 400_000)
    # --prune-history: anvil keeps no per-block state snapshots (with them, 100k payments
    # take ~10 GB of RAM and minutes); blocks, receipts and logs are all still served.
    chain = BenchChain(extra_args=("--gas-limit", str(gas_limit), "--prune-history"))
    t0 = time.perf_counter()
    chain.start()
    try:
        configure_environment(chain, database=args.database, redis_url=redis_url)
        recreate_database(args.database)
        setup_django()
        from django.core.cache import cache

        cache.clear()
        say(f"anvil {chain.url}, escrow {chain.escrow}, database {args.database}: "
            f"ready in {time.perf_counter() - t0:.1f} s")

        now = datetime.now(UTC)
        payments = make_payments(args, expiry=int((now + timedelta(days=30)).timestamp()))
        started = time.perf_counter()
        insert_bookings(payments, scheduled_at=now + timedelta(days=30), now=now)
        say(f"bookings: {len(payments):,} PENDING_PAYMENT rows inserted in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        first_block, last_block = mine_payments(chain, payments, args.per_block)
        say(
            f"chain: {len(payments):,} payments mined in blocks {first_block}..{last_block} "
            f"({args.per_block}/block) in {time.perf_counter() - started:.1f} s"
        )
        head = chain.block_number()
        del payments
        gc.collect()

        from django.db import connection

        connection.close()  # the scan starts from a fresh connection, as a worker would
        started = time.perf_counter()
        with RssSampler(interval=0.05) as rss, CpuMeter(chain.node.process.pid) as cpu:
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                report = profiler.runcall(run_scanner_to_head, head)
                profiler.dump_stats(args.profile)
            else:
                report = run_scanner_to_head(head)
        scan_seconds = time.perf_counter() - started
        facts = check_applied(args.events)
        applied_rate = args.events / scan_seconds

        raw_seconds = raw_get_logs_seconds(chain, first_block, last_block)
        web3_rate, web3_seconds = web3_get_logs_rate(chain, first_block, last_block, args.events)
        copy_rows_rate, copy_seconds = copy_rate(args.events)

        vs_web3 = applied_rate / web3_rate
        vs_copy = applied_rate / copy_rows_rate
        rss_growth = rss.end - rss.start
        flat = rss.peak - rss.start <= max(64.0, 0.25 * rss.start)
        say("")
        say(f"== catch-up: {args.events:,} BookingCreatedAndPaid logs, blocks {first_block}..{last_block} ==")
        say(f"scan + apply (real scanner, {report['rounds']} scan call(s)): {scan_seconds:.2f} s")
        say(f"  applied events/s              : {applied_rate:,.0f}   (target >= {TARGET_RATE:,})")
        say(f"  bookings PAID / events stored : {facts['bookings_paid']:,} / {facts['events_processed']:,}"
            f"  (status changes {facts['chain_status_changes']:,}, nonces consumed {facts['nonces_consumed']:,})")
        say(f"(i)  web3.py contract.events.BookingCreatedAndPaid.get_logs: {web3_seconds:.2f} s = "
            f"{web3_rate:,.0f} events/s (raw eth_getLogs alone: {raw_seconds:.2f} s)")
        say(f"     applied / web3 get_logs    : {vs_web3:.1f}x   (target >= {TARGET_VS_WEB3}x)")
        say(f"(ii) PostgreSQL COPY of the same {args.events:,} event rows (table LIKE the event table): "
            f"{copy_seconds:.2f} s = {copy_rows_rate:,.0f} rows/s")
        say(f"     applied / COPY             : {vs_copy:.2f}x   (target >= {TARGET_VS_COPY}x)")
        say(f"RSS of the scanning process (MiB): start {rss.start:.0f}, peak {rss.peak:.0f}, end {rss.end:.0f} "
            f"(25/50/75 %: {', '.join(f'{v:.0f}' for v in rss.quartiles())}; growth {rss_growth:+.0f}) -> "
            f"{'flat' if flat else 'NOT flat'}")
        met = applied_rate >= TARGET_RATE and vs_web3 >= TARGET_VS_WEB3 and vs_copy >= TARGET_VS_COPY and flat
        us = cpu.per_event_us(args.events)
        say(f"CPU per applied event (µs): scanner process {us['scanner']:.0f}, PostgreSQL {us['postgres']:.0f}, "
            f"anvil {us['anvil']:.0f}; rest of the machine {us['other']:.0f}; "
            f"cores busy {cpu.utilisation():.0%} of {cpu.cores}")
        say(f"  -> this work per event, on {cpu.cores} cores kept 100 % busy, caps the rate at "
            f"{cpu.ceiling(args.events):,.0f} events/s")
        say(f"targets: {'all met' if met else 'NOT all met'}")
        return 0 if met else 1
    finally:
        chain.stop()


if __name__ == "__main__":
    sys.exit(main())
