"""The scan loop: keeps the event store and the bookings in step with the chain.

    scan_chain(*, client=None, max_seconds=None, follow_seconds=0.0, lock_wait_seconds=0.0,
               actor="scanner") -> ScanReport
        Single-flight (chain_events.cursor.scan_lock; a second caller waits up to
        lock_wait_seconds for it, then gets ScanReport(skipped=True)). Ingests from the cursor
        up to head - CHAIN_CONFIRMATIONS range by range, detects reorgs and rolls them back,
        then keeps polling the head for `follow_seconds` (0: one pass).

A pass fetches range after range (chain_events.ranges: sizing, prefetch), hands each to the
apply lanes (chain_events.lanes: one transaction per range that stores it, applies it through
chain_events.ingest and moves the cursor; during a catch-up two consecutive ranges are
applied at once, committing in chain order), and rolls reorgs back (chain_events.reorg).

Finality: a block is final at or below min(node's `finalized` tag, head - REORG_WINDOW) —
the stricter of the two, so a dev node that calls its head "finalized" still gets a window.
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager

from django import db
from django.conf import settings
from django.db import connection
from django.utils import timezone

from . import metrics
from .consumers import Superseded
from .cursor import IndexedContract, get_cursor, indexed_contract, scan_lock
from .lanes import ApplyLanes
from .models import SyncCursor
from .ranges import MAX_GROWTH, PROBE_BLOCKS, Prefetcher, ReorgDetected, shrink
from .reorg import roll_back_reorg
from .reports import ScanReport
from .rpc import LogRangeTooLarge, RpcClient, RpcUnavailable, avoid_endpoint_of, get_chain_tip, get_rpc_client

log = logging.getLogger(__name__)


def scan_chain(
    *, client: RpcClient | None = None, max_seconds: float | None = None, follow_seconds: float = 0.0,
    lock_wait_seconds: float = 0.0, actor: str = "scanner",
) -> ScanReport:
    client = client or get_rpc_client()
    contract = indexed_contract()
    max_seconds = settings.CHAIN_SCAN_MAX_SECONDS if max_seconds is None else max_seconds
    with scan_lock(contract, lock_wait_seconds) as acquired:
        if not acquired:
            metrics.SCANS_SKIPPED.inc()
            return ScanReport(skipped=True)
        report = ScanReport()
        started = time.monotonic()
        deadline = started + max_seconds
        follow_until = None
        while True:
            try:
                caught_up = _scan_pass(client, contract, report, deadline, actor)
            except Exception as exc:
                _record_scan_failure(contract, exc)
                avoid_endpoint_of(client, exc)
                raise
            if report.halted or not caught_up or follow_seconds <= 0:
                break
            now = time.monotonic()
            if follow_until is None:
                follow_until = now + follow_seconds
            if now + settings.CHAIN_SCAN_POLL_SECONDS >= min(follow_until, deadline):
                break
            time.sleep(settings.CHAIN_SCAN_POLL_SECONDS)
        return report


def _record_scan_failure(contract: IndexedContract, exc: Exception) -> None:
    """Keep why the pass failed on the cursor (console, health): a failure that repeats every
    beat (a node that keeps answering wrong, a booking whose rebuild cannot be applied) is
    otherwise only a growing lag."""
    metrics.SCAN_FAILURES.labels(type(exc).__name__).inc()
    try:
        SyncCursor.objects.filter(chain_id=contract.chain_id, contract_address=contract.contract).update(
            last_error=f"{type(exc).__name__}: {exc}"[:2000], last_error_at=timezone.now()
        )
    except db.Error:  # the database may be what failed: the original error is what matters
        log.exception("could not record the scan failure (%s) on the cursor", exc)


def _final_block(tip) -> int:
    by_depth = tip.latest.number - settings.REORG_WINDOW
    if tip.finalized is not None:
        return min(tip.finalized.number, by_depth)
    return by_depth


def _scan_pass(client, contract: IndexedContract, report: ScanReport, deadline: float, actor: str) -> bool:
    """Scan from the cursor to the confirmed head. True when caught up (or halted)."""
    cursor = get_cursor(contract)
    if cursor.halted:
        report.halted = True
        return True
    # The header at the cursor is asked for only when we hold its hash (a cursor set by hand
    # may not): it is what a reorg is detected by, and a node behind it is failed over.
    tip = get_chain_tip(client, cursor.last_block if cursor.last_block_hash else None)
    report.head = tip.latest.number
    metrics.HEAD_BLOCK.set(tip.latest.number)
    final = _final_block(tip)
    moved_back = tip.at_cursor is not None and tip.at_cursor.hash != cursor.last_block_hash
    if moved_back:
        if not roll_back_reorg(client, contract, cursor, tip.latest.number, report, actor):
            return True
        cursor = get_cursor(contract)
    confirmed = tip.latest.number - settings.CHAIN_CONFIRMATIONS
    with Prefetcher(client, contract, final) as prefetcher:
        return _scan_ranges(client, contract, cursor, tip, final, confirmed, prefetcher, report, deadline, actor)


def _scan_ranges(client, contract, cursor, tip, final, confirmed, prefetcher, report, deadline, actor) -> bool:
    """Fetch range after range from the cursor to `confirmed` and hand each to the apply lanes.

    The loop runs ahead of the database: `cursor` is moved locally as soon as a range is
    handed over, and read back from the database whenever the ranges in flight had to be
    waited for (a refused range, a reorg, a range that did not commit).
    """
    parallel = settings.CHAIN_APPLY_PARALLEL and not connection.in_atomic_block
    with _heap_frozen(), ApplyLanes(parallel, report) as lanes:
        while True:
            if cursor.last_block >= confirmed or time.monotonic() >= deadline:
                _settle(lanes, cursor)
                if cursor.last_block >= confirmed:
                    break
                if time.monotonic() >= deadline:
                    _note_position(cursor, tip, final, report)
                    return False
                continue  # a range in flight did not commit: fetch it again
            from_block = cursor.last_block + 1
            size = cursor.range_size
            if cursor.last_scan_at is None and confirmed - cursor.last_block > PROBE_BLOCKS * MAX_GROWTH:
                # A cursor that never scanned knows nothing of the log density: before a long
                # catch-up, probe a block and size from what it holds (ranges.next_range_size),
                # rather than ask a node without a result cap for a whole default range
                # (100,000s of logs in one answer). A short gap is read whole, as any range.
                size = cursor.range_size = min(size, PROBE_BLOCKS)
            to_block = min(from_block + size - 1, confirmed)
            try:
                fetched = prefetcher.take(cursor, from_block, to_block, report)
            except (LogRangeTooLarge, RpcUnavailable, ReorgDetected) as exc:
                # Handled from where the database stands: let the ranges in flight finish first.
                _settle(lanes, cursor)
                if cursor.last_block + 1 != from_block:
                    continue  # a range in flight did not commit: start again from the cursor
                if isinstance(exc, LogRangeTooLarge):
                    shrink(cursor, from_block, to_block, exc.suggested_to, report)
                elif isinstance(exc, RpcUnavailable):
                    if not (exc.timed_out and to_block > from_block):
                        raise
                    shrink(cursor, from_block, to_block, None, report)
                else:
                    if not roll_back_reorg(client, contract, cursor, tip.latest.number, report, actor):
                        return True
                    cursor = get_cursor(contract)
                continue
            # Fetch (and decode) the next range in the background while this one is written:
            # in line, from now on; with lanes, once this range has its lane, so that at most
            # three ranges are alive (two being applied, one being fetched).
            following = None
            if to_block < confirmed:
                next_to = min(to_block + fetched.next_size, confirmed)
                following = (fetched.last_header.hash, to_block + 1, next_to, fetched.next_size, report)
            if following and not lanes.parallel:
                prefetcher.start(*following)
            try:
                lanes.submit(contract, cursor.pk, fetched, tip, final, actor, last=to_block >= confirmed)
            except Superseded as exc:
                log.info("scan range %d-%d superseded (%s); continuing from the cursor", from_block, to_block, exc)
                _settle(lanes, cursor)
                continue
            if following and lanes.parallel:
                prefetcher.start(*following)
            cursor.last_block, cursor.last_block_hash = to_block, fetched.last_header.hash
            cursor.range_size, cursor.last_scan_at = fetched.next_size, timezone.now()
    _note_position(cursor, tip, final, report)
    return True


def _settle(lanes: ApplyLanes, cursor: SyncCursor) -> None:
    """Wait for the ranges in flight and read the cursor back from the database. A range that
    was superseded (the one before it failed) only means the loop goes on from the cursor;
    any other failure is raised."""
    try:
        lanes.drain()
    except Superseded as exc:
        log.info("scan ranges in flight superseded (%s); continuing from the cursor", exc)
    cursor.refresh_from_db()


@contextmanager
def _heap_frozen():
    """Keep the cyclic garbage collector off the long-lived heap during a scan pass.

    A range creates ~10^5 objects that live until it is committed (decoded logs, booking
    snapshots, plans); such bursts of survivors trigger full collections, and a full
    collection walks the whole heap (Django, web3, eth_abi: millions of objects) — measured
    at ~15-20 % of catch-up time. gc.freeze() moves what exists at the start of the pass
    into the permanent generation, so collections during the pass only walk what the pass
    itself allocated; cyclic garbage the ranges leave is still collected as it arises."""
    if gc.get_freeze_count():  # someone up the stack froze the heap: leave it to them
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _note_position(cursor: SyncCursor, tip, final: int, report: ScanReport) -> None:
    SyncCursor.objects.filter(pk=cursor.pk).update(
        head_block=tip.latest.number, finalized_block=final, last_scan_at=timezone.now(), last_error=""
    )
    report.cursor = cursor.last_block
    metrics.CURSOR_BLOCK.set(cursor.last_block)
    metrics.SYNC_LAG.set(max(0, tip.latest.number - cursor.last_block))
