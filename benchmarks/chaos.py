"""Chaos run: the whole system under reorgs, RPC faults and process kills, then every invariant.

    .venv/bin/python benchmarks/chaos.py --minutes 20              # the full run (docs/chaos.md)
    .venv/bin/python benchmarks/chaos.py --minutes 1.5 --flows 4   # a short one

Brings up anvil (a block a second) with the contracts, the faulty primary RPC proxy in front of
it (anvil itself is the healthy fallback), migrations, gunicorn, a Celery worker and Celery beat
on free ports with their own database (--database, dropped and created again) and Redis
(--redis-url, flushed). Drives --flows concurrent client flows through the API and the contract
(see benchmarks/chaos_parts/flows.py) while it injects, on a schedule, reorgs, RPC faults and
SIGKILLs of the worker and beat; then stops the faults, lets the system settle (polling, at most
--settle-seconds) and prints flows, faults by kind, every invariant with its numbers, the time to
converge and the 5xx answers. Exit 1 on any broken invariant, open (false) flag, stalled flow or 5xx.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.chaos_parts.faults import FaultInjector, Plan  # noqa: E402
from benchmarks.chaos_parts.flows import Driver  # noqa: E402
from benchmarks.chaos_parts.invariants import Check, InvariantChecker, project_ledger_check  # noqa: E402
from benchmarks.chaos_parts.report import render  # noqa: E402
from benchmarks.chaos_parts.system import FEE_RECIPIENT, System  # noqa: E402

AUTO_LEAD_SECONDS = 15  # auto-complete bookings are scheduled this far ahead: due during the run
COMPLETION_DELAY = 5  # the contract's operator completion delay after payment (set by the run)
# The backend's settings for the run: short intervals so a run of minutes sees many cycles of each
# periodic job, and the per-wallet/per-address throttles out of the way of many flows from one host.
SYSTEM_SETTINGS = {
    "RPC_TIMEOUT_SECONDS": "3",
    "AUTO_COMPLETE_AFTER_SECONDS": "0",
    "AUTO_COMPLETE_INTERVAL_SECONDS": "5",
    "RECONCILE_INTERVAL_SECONDS": "20",
    "CHAIN_EVENT_RETRY_BASE_SECONDS": "2",
    "RETRY_FAILED_EVENTS_INTERVAL_SECONDS": "5",
    "TX_STUCK_ALERT_SECONDS": "120",
    "SIWE_THROTTLE_RATE": "100000/minute",
    "AUTHORIZATION_THROTTLE_RATE": "100000/minute",
    "WALLET_WRITE_THROTTLE_RATE": "100000/minute",
    "PUBLIC_THROTTLE_RATE": "100000/minute",
    "HEALTH_THROTTLE_RATE": "100000/minute",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the fault phase (default 20)")
    parser.add_argument("--flows", type=int, default=12, help="concurrent client flows (default 12)")
    parser.add_argument("--reorgs", type=int, help="default: 3.3 a minute")
    parser.add_argument("--kills", type=int, help="SIGKILLs, worker and beat in turn (default: 1.5 a minute)")
    parser.add_argument("--rpc-faults", type=int, help="brief RPC faults on the primary (default: 3.5 a minute)")
    parser.add_argument("--outages", type=int, help="full outages of the primary (default: 1 per 10 minutes)")
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    # An operator send left SUBMITTED by a reorg or a kill gets its outcome from the settle job (every 60 s)
    # once TX_RECEIPT_TIMEOUT_SECONDS (180 s) passed: convergence can take that long.
    parser.add_argument("--settle-seconds", type=float, default=420.0, help="longest wait for convergence")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--database", default="bookme_chaos", help="dropped and created again")
    parser.add_argument("--postgres-url", default=os.environ.get("CHAOS_POSTGRES_URL",
                                                                 "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis-url", default=os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/14"),
                        help="flushed at the start")
    return parser.parse_args(argv)


def plan_for(args) -> Plan:
    minutes = args.minutes
    return Plan(
        seconds=minutes * 60,
        reorgs=args.reorgs if args.reorgs is not None else round(3.3 * minutes),
        kills=args.kills if args.kills is not None else max(2, round(1.5 * minutes)),
        rpc_faults=args.rpc_faults if args.rpc_faults is not None else round(3.5 * minutes),
        outages=args.outages if args.outages is not None else max(1, round(minutes / 10)),
        outage_seconds=args.outage_seconds,
    )


def say(message: str) -> None:
    print(message, flush=True)


def log_tracebacks(system: System) -> dict[str, int]:
    counts = {}
    for name in ("web", "worker", "beat"):
        path = system.state_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        counts[name] = len(re.findall(r"^Traceback", text, flags=re.M))
    return counts


def main(argv=None) -> int:
    args = parse_args(argv)
    # Stopped with SIGTERM (a timeout, kill): stop the system too, through the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = plan_for(args)
    rng = random.Random(args.seed)
    say(f"$ {shlex.join([Path(sys.executable).name, 'benchmarks/chaos.py', *sys.argv[1:]])}")
    say(f"chaos run started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {args.minutes:g} min of faults, "
        f"{args.flows} concurrent flows, {plan.reorgs} reorgs, {plan.kills} kills, {plan.rpc_faults} RPC faults "
        f"+ {plan.outages} outage(s) of {plan.outage_seconds:.0f} s, seed {args.seed}")
    system = System(database_url=f"{args.postgres_url.rstrip('/')}/{args.database}", redis_url=args.redis_url,
                    settings=SYSTEM_SETTINGS, completion_delay=COMPLETION_DELAY)
    t0 = time.monotonic()
    injector = None
    try:
        system.start()
        system.wait_ready()
        import django

        os.environ["LOG_LEVEL"] = "WARNING"  # this process only reads: its start-up lines are noise
        django.setup()
        driver = Driver(flows=args.flows, base_url=system.base_url, node_url=system.anvil.url,
                        escrow=system.deployment.escrow, usdc=system.deployment.usdc,
                        chain_id=system.deployment.chain_id, siwe_domain=system.siwe_domain, seed=args.seed,
                        auto_lead_seconds=AUTO_LEAD_SECONDS)
        driver.prepare()
        say(f"system up in {time.monotonic() - t0:.1f} s: web {system.base_url}, anvil {system.anvil.url}, "
            f"primary RPC (faulty proxy) {system.proxy.url}, database {args.database}, logs {system.state_dir}")
        say(f"backend settings for the run: {SYSTEM_SETTINGS}; contract operator completion delay "
            f"{COMPLETION_DELAY} s; auto-complete bookings scheduled {AUTO_LEAD_SECONDS} s ahead")
        # anvil_setBalance (the wallets' gas) is state, not a transaction: a reorg below it would undo it.
        floor_block = driver.bury_setup(blocks=12)
        injector = FaultInjector(system, plan, rng, say, floor_block=floor_block)
        driver.start()
        injector.start()
        run_started = time.monotonic()
        while time.monotonic() - run_started < plan.seconds:
            time.sleep(max(0.0, min(5.0, plan.seconds - (time.monotonic() - run_started))))
            if injector.is_alive() is False and time.monotonic() - run_started < plan.seconds * 0.9 - 5:
                break
        injector.finish()
        faults_ended = time.monotonic()
        say(f"faults stopped after {faults_ended - run_started:.0f} s; finishing the flows under way")
        driver.stop()
        say(f"flows stopped {time.monotonic() - faults_ended:.0f} s after the last fault; settling")
        checker = InvariantChecker(
            anvil_url=system.anvil.url, escrow=system.deployment.escrow, usdc=system.deployment.usdc,
            start_block=system.deployment.block_number, fee_recipient=FEE_RECIPIENT,
            inviter=driver.inviter.address, providers=[r.provider.address for r in driver.runners],
        )
        converge_seconds, checks = None, []
        extra_failures = []
        still_off = None
        while True:
            driver.resend_dropped()
            try:
                checks = checker.run(auto_complete=driver.stats.auto_complete_bookings, due_before=datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 (a check that cannot be made is a failed check, not a lost run)
                checks = [Check("invariant checks", False, f"{type(exc).__name__}: {exc}")]
            unmined = driver.unmined()
            if all(c.ok for c in checks) and not unmined:
                checks.append(project_ledger_check(system))  # once ours hold: theirs must agree
            off = [c.name for c in checks if not c.ok] + (["wallet transactions not mined"] if unmined else [])
            if off != still_off:
                say(f"  settling, {time.monotonic() - faults_ended:.0f} s after the last fault: "
                    + (f"still off: {', '.join(off)}" if off else "all invariants hold"))
                still_off = off
            if not off:
                converge_seconds = time.monotonic() - faults_ended
                break
            if time.monotonic() - faults_ended > args.settle_seconds:
                if not any(c.name == "manage.py check_ledger" for c in checks):
                    checks.append(project_ledger_check(system))
                if unmined:
                    extra_failures.append(f"wallet transactions still not mined: {len(unmined)} {unmined[:5]}")
                break
            time.sleep(3)
        lines, ok = render(stats=driver.stats, injector=injector, checks=checks, converge_seconds=converge_seconds,
                           settle_limit=args.settle_seconds, log_errors=log_tracebacks(system),
                           proxy_faulted=dict(system.proxy.faulted_requests), restarts=system.restarts,
                           exits=system.exits,
                           extra_failures=extra_failures)
        for line in lines:
            say(line)
        say(f"chaos run ended {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {time.monotonic() - t0:.0f} s in all")
        return 0 if ok else 1
    finally:
        if injector is not None:
            injector.stopped.set()
        system.stop()


if __name__ == "__main__":
    sys.exit(main())
