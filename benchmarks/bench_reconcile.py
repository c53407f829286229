"""Reconciliation benchmark: 10,000 active bookings checked against anvil, beside a naive baseline.

    .venv/bin/python benchmarks/bench_reconcile.py                    # 10,000 bookings, 2,000 paid
    .venv/bin/python benchmarks/bench_reconcile.py --bookings 2000 --paid 200

Setup (not measured): its own anvil with the contracts, its own database `bookme_bench_reconcile`
(dropped and created), N PENDING_PAYMENT bookings (bulk COPY, live payment authorizations),
and --paid of them paid on chain with the scanner NOT running — so the database is behind the
chain for those, the case reconciliation exists for; the rest have no booking on chain (NONE).

Measured, in the same run:
1. repair run: `reconcile_bookings()` — reads every booking's on-chain state with getBookings
   (RECONCILE_BATCH_SIZE ids per eth_call, RECONCILE_CALLS_PER_REQUEST calls per JSON-RPC batch),
   fetches the missed bookings' logs with bookingId-topic eth_getLogs and applies them through the
   scanner's handlers; every paid booking must end PAID;
2. steady run: `reconcile_bookings()` again — everything in agreement (the every-few-minutes case);
3. baseline: one `getBooking(id)` eth_call per booking (one HTTP round trip each) over the same
   RpcClient, comparing with the database the same way — the read phase only, so the baseline
   is a lower bound for a one-call-per-booking design.
Round trips are counted by RpcClient.round_trips. Target (issue 5): >= 20x fewer round trips
than the baseline and <= 5 s per run.
Environment: BENCH_POSTGRES_URL, BENCH_REDIS_URL (default redis://127.0.0.1:6379/12).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid as uuid_lib
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    BenchChain,
    Payment,
    bench_addresses,
    configure_environment,
    insert_bookings,
    recreate_database,
    say,
    setup_django,
)

DATABASE = "bookme_bench_reconcile"
TARGET_RATIO = 20
TARGET_SECONDS = 5.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bookings", type=int, default=10_000)
    parser.add_argument("--paid", type=int, default=2_000, help="how many are paid on chain, unscanned")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--database", default=DATABASE)
    return parser.parse_args()


def pay_on_chain(chain: BenchChain, payments: list[Payment], per_block: int = 200) -> None:
    chain.fund_customers(sorted({p.customer for p in payments}))
    next_nonce = dict.fromkeys({p.customer for p in payments}, 2)  # after mint + approve
    chain.call("evm_setAutomine", [False])
    hashes: list[str] = []
    for start in range(0, len(payments), per_block):
        calls = []
        for payment in payments[start:start + per_block]:
            transaction = chain.payment_transaction(payment, nonce=next_nonce[payment.customer])
            calls.append(("eth_sendTransaction", [transaction]))
            next_nonce[payment.customer] += 1
        hashes += chain.batch(calls)
        chain.call("evm_mine")
    chain.call("evm_setAutomine", [True])
    chain.wait_receipts(hashes[-5:])


def baseline_one_call_per_booking(client, bookings: list[tuple[str, str]]) -> tuple[float, int, int]:
    """getBooking(id) per booking, one round trip each; (seconds, round trips, mismatches)."""
    from django.conf import settings

    from escrow.chain_effects import IMPLIED_CHAIN_STATUS
    from reconciliation.chain_reads import CHAIN_STATUS_NAMES
    from reconciliation.transactions import escrow_call

    before = client.round_trips
    started = time.perf_counter()
    mismatches = 0
    for chain_booking_id, status in bookings:
        data = "0x" + escrow_call("getBooking", bytes.fromhex(chain_booking_id[2:])).hex()
        result = client.call("eth_call", [{"to": settings.ESCROW_CONTRACT_ADDRESS, "data": data}, "latest"])
        chain_status = CHAIN_STATUS_NAMES[int(result[2 + 64 * 7: 2 + 64 * 8], 16)]
        mismatches += chain_status != IMPLIED_CHAIN_STATUS[status]
    return time.perf_counter() - started, client.round_trips - before, mismatches


def describe(label: str, report) -> None:
    say(
        f"{label}: {report.duration_seconds:.2f} s, {report.rpc_round_trips} RPC round trips — "
        f"{report.checked:,} checked, {report.in_agreement:,} in agreement, {report.repaired:,} repaired, "
        f"{report.flagged} flagged, {report.errors} errors ({report.status})"
    )


def main() -> int:
    args = parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    chain = BenchChain(extra_args=("--gas-limit", "100000000"))
    chain.start()
    try:
        configure_environment(chain, database=args.database, redis_url=redis_url)
        recreate_database(args.database)
        setup_django()
        from django.core.cache import cache

        cache.clear()
        now = datetime.now(UTC)
        customers = bench_addresses("reconcile-customer", args.customers)
        providers = bench_addresses("reconcile-provider", 200)
        payments = [
            Payment(uuid=uuid_lib.uuid4(), customer=customers[i % len(customers)],
                    provider=providers[i % len(providers)],
                    amount=1_000_000 + i, nonce=2 * 10**12 + i, expiry=int((now + timedelta(days=30)).timestamp()))
            for i in range(args.bookings)
        ]
        insert_bookings(payments, scheduled_at=now + timedelta(days=30), now=now)
        started = time.perf_counter()
        paid = payments[:: max(1, args.bookings // max(1, args.paid))][: args.paid]
        pay_on_chain(chain, paid)
        say(f"setup: {len(payments):,} bookings in the database, {len(paid):,} paid on chain and not scanned "
            f"({time.perf_counter() - started:.1f} s)")

        from django.conf import settings

        from chain_events.rpc import get_rpc_client
        from escrow.models import Booking
        from reconciliation.reconcile import reconcile_bookings

        say(f"batching: {settings.RECONCILE_BATCH_SIZE} ids per getBookings call, "
            f"{settings.RECONCILE_CALLS_PER_REQUEST} calls per JSON-RPC batch, "
            f"{settings.RECONCILE_LOG_TOPIC_BATCH} ids per eth_getLogs topic filter")
        repair = reconcile_bookings(trigger="benchmark")
        describe("repair run  ", repair)
        paid_now = Booking.objects.filter(status="PAID").count()
        if repair.repaired != len(paid) or paid_now != len(paid):
            raise SystemExit(f"repair incomplete: {repair.repaired} repaired, {paid_now} PAID, expected {len(paid)}")
        steady = reconcile_bookings(trigger="benchmark")
        describe("steady run  ", steady)
        if steady.in_agreement != len(payments):
            raise SystemExit("steady run found differences")

        client = get_rpc_client()
        bookings = list(Booking.objects.order_by("pk").values_list("chain_booking_id", "status"))
        seconds, round_trips, mismatches = baseline_one_call_per_booking(client, bookings)
        say(f"baseline    : {seconds:.2f} s, {round_trips:,} RPC round trips (getBooking per booking, read only), "
            f"{mismatches} mismatches")
        worst = max(repair.rpc_round_trips, steady.rpc_round_trips)
        ratio = round_trips / worst
        slowest = max(repair.duration_seconds, steady.duration_seconds)
        say(f"result      : {ratio:,.0f}x fewer round trips than the baseline (target >= {TARGET_RATIO}x), "
            f"slowest run {slowest:.2f} s (target <= {TARGET_SECONDS:.0f} s), baseline {seconds / slowest:.1f}x slower")
        ok = ratio >= TARGET_RATIO and slowest <= TARGET_SECONDS
        say("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        chain.stop()


if __name__ == "__main__":
    sys.exit(main())
