"""The block-range log scanner: keeps the event store and the bookings in step with the chain.

Public API (stable: tasks, commands, the fast path, reconciliation and benchmarks call these)

    scan_chain(*, client=None, max_seconds=None, follow_seconds=0.0, lock_wait_seconds=0.0,
               actor="scanner") -> ScanReport
        Single-flight (a PostgreSQL advisory lock per chain + contract; a second caller waits
        up to lock_wait_seconds for it, then gets ScanReport(skipped=True)). Ingests from the cursor up to
        head - CHAIN_CONFIRMATIONS range by range, detects reorgs and rolls them back, then
        keeps polling the head for `follow_seconds` (0: one pass).
    apply_logs(raw_logs, *, source="reconciliation", actor="", status_source=None) -> LogsOutcome
    apply_decoded_logs(logs, *, source=..., actor="", status_source=None) -> LogsOutcome
        Raw eth_getLogs/receipt logs (any contract; only ours are kept) → stored once and every
        booking they touch re-derived and applied, in one transaction. No cursor change.
        Reconciliation passes logs it fetched with a bookingId topic filter.
    replay_range(from_block, to_block=None, *, client=None, actor="replay") -> ReplayReport
        Re-fetch and re-apply a block range (idempotent); the cursor is not moved.
    retry_failed_events(*, now=None, limit=500, actor="retry") -> RetryReport
        Re-apply FAILED events whose backoff is due and RETRY events (staff asked).
    get_cursor() -> SyncCursor          the configured chain + contract's cursor (created if new)
    rewind_cursor(block, *, reason) -> SyncCursor
        Staff: move the cursor back (clears a halt after a reorg deeper than the window).

How a range is applied (`_ingest`): eth_getLogs for the range together with the header of its
last block in ONE batch (chain_events.rpc.get_logs_checked), decode with eth_abi, then in
ONE database transaction: insert the rows (bulk, ON CONFLICT on the log key), mark REMOVED
the rows stored ahead of the scanner (fast path) whose block left the chain, fold and apply
every touched booking (chain_events.handlers.apply_events: a few set-based statements for
the whole range), store the block hashes of the unfinalized part, and move the cursor (only from the block before
the range). A crash anywhere before the commit leaves nothing behind; the rescan applies it
once. During a catch-up two consecutive ranges are applied at once, each in its own
transaction on its own connection, committing in chain order (_ApplyLanes).

Reorgs: the cursor remembers its block's hash and the hashes of the unfinalized window
(BlockHash). When the canonical header at the cursor differs (or a new range's first block
does not chain onto it) the scanner finds the highest stored block whose hash is still
canonical, marks every event above it REMOVED, re-derives the affected bookings from their
remaining events, moves the cursor back there and rescans. A reorg deeper than the window
halts the cursor for staff (an alert, never a silent rewrite).

Finality: a block is final at or below min(node's `finalized` tag, head - REORG_WINDOW) —
the stricter of the two, so a dev node that calls its head "finalized" still gets a window.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django import db
from django.db import connection, transaction
from django.utils import timezone
from eth_hash.auto import keccak

from common.db import server_binding_cursor

from . import handlers, metrics, store
from .decoding import BOOKING_EVENT_TOPICS, DecodedLog, decode_logs
from .models import BlockHash, ChainEvent, EventSource, EventStatus, SyncCursor
from .rpc import (
    BlockHeader,
    LogRangeTooLarge,
    RpcClient,
    RpcInconsistentAnswer,
    RpcUnavailable,
    get_chain_tip,
    get_headers,
    get_logs_checked,
    get_rpc_client,
)

log = logging.getLogger(__name__)

__all__ = [
    "ScanReport", "LogsOutcome", "ReplayReport", "RetryReport",
    "scan_chain", "apply_logs", "replay_range", "retry_failed_events", "get_cursor", "rewind_cursor", "held_block_hash",
]


# -- reports --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RangeTotals:
    """What scanned or replayed ranges added up to."""

    ranges: int = 0
    logs: int = 0  # our contract's booking events seen
    inserted: int = 0  # rows stored (or revived)
    removed: int = 0  # events marked REMOVED (reorgs, stale fast-path rows)
    bookings: int = 0  # bookings applied
    orphans: int = 0
    failed_events: int = 0
    dead_letters: int = 0

    def count(self, outcome: LogsOutcome) -> None:
        """Add one range's outcome to the totals."""
        self.ranges += 1
        self.logs += outcome.logs
        self.inserted += outcome.inserted
        self.removed += outcome.removed
        self.bookings += outcome.bookings
        self.orphans += outcome.orphans
        self.failed_events += outcome.failed_events
        self.dead_letters += outcome.dead_letters


@dataclass(kw_only=True)
class ScanReport(RangeTotals):
    skipped: bool = False  # another scan held the lock
    halted: bool = False  # the cursor is halted (deep reorg): staff must rewind it
    head: int | None = None
    cursor: int | None = None
    reorgs: list[int] = field(default_factory=list)  # depth of each rolled back reorg
    range_shrinks: int = 0
    # Smallest range refused in this run: ranges grow back only below it (no refuse/grow flapping).
    range_ceiling: int | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LogsOutcome:
    logs: int = 0
    inserted: int = 0
    removed: int = 0
    bookings: int = 0
    orphans: int = 0
    failed_events: int = 0
    dead_letters: int = 0
    booking_ids: list[str] = field(default_factory=list)

    def add(self, apply: handlers.ApplyOutcome | None) -> None:
        if apply is not None:
            self.bookings += apply.bookings
            self.orphans += apply.orphans
            self.failed_events += apply.failed_events
            self.dead_letters += apply.dead_letters


@dataclass(kw_only=True)
class ReplayReport(RangeTotals):
    from_block: int
    to_block: int


@dataclass
class RetryReport:
    attempted: int = 0  # events retried
    processed: int = 0
    failed: int = 0
    dead_letters: int = 0


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    chain_id: int
    contract: str  # lower-case hex

    @property
    def lock_key(self) -> int:
        digest = keccak(f"bookme-scan:{self.chain_id}:{self.contract}".encode())
        return int.from_bytes(digest[:8], "big", signed=True)


def _target() -> _Target:
    return _Target(settings.CHAIN_ID, settings.ESCROW_CONTRACT_ADDRESS.lower())


def get_cursor(target: _Target | None = None) -> SyncCursor:
    target = target or _target()
    cursor, _ = SyncCursor.objects.get_or_create(
        chain_id=target.chain_id,
        contract_address=target.contract,
        defaults={"last_block": settings.CHAIN_START_BLOCK - 1, "range_size": settings.CHAIN_LOG_RANGE_INITIAL},
    )
    return cursor


def held_block_hash(number: int) -> str | None:
    """The hash of block `number` as the scanner applied it, while the block is in the
    unfinalized window it holds (None outside it)."""
    target = _target()
    return (
        BlockHash.objects.filter(
            cursor__chain_id=target.chain_id, cursor__contract_address=target.contract, number=number
        )
        .values_list("hash", flat=True)
        .first()
    )


def rewind_cursor(block: int, *, reason: str = "") -> SyncCursor:
    """Move the cursor back to `block` (the next scan re-reads everything after it) and un-halt it.

    Rows stored for the rescanned blocks that the chain no longer has are marked REMOVED by
    the rescan (see `_ingest`), and their bookings re-derived. A block after the cursor's is
    refused (ValueError): the blocks skipped would never be scanned.
    """
    target = _target()
    with transaction.atomic():
        cursor = get_cursor(target)
        cursor = SyncCursor.objects.select_for_update().get(pk=cursor.pk)
        block = max(block, settings.CHAIN_START_BLOCK - 1)
        if block > cursor.last_block:
            raise ValueError(
                f"the cursor moves back only: block {block} is after its block {cursor.last_block}, "
                "and the blocks in between would never be scanned"
            )
        held = BlockHash.objects.filter(cursor=cursor, number=block).values_list("hash", flat=True).first()
        BlockHash.objects.filter(cursor=cursor, number__gt=block).delete()
        cursor.last_block = block
        cursor.last_block_hash = held or ""
        cursor.halted = False
        cursor.halt_reason = ""
        cursor.halted_at = None
        cursor.save()
    log.warning("sync cursor rewound to block %s: %s", block, reason or "-")
    return cursor


@contextmanager
def scan_lock(target: _Target, wait_seconds: float = 0.0):
    """Single-flight: a session-level PostgreSQL advisory lock (freed by the server if the
    worker dies, so a crashed scan never leaves a stale lock behind). With `wait_seconds` the
    caller polls for the lock that long before giving up: a beat's scan that arrives while the
    previous one is still following the head takes over when it ends, leaving no gap."""
    give_up_at = time.monotonic() + wait_seconds
    while True:
        with connection.cursor() as c:
            c.execute("SELECT pg_try_advisory_lock(%s)", [target.lock_key])
            acquired = c.fetchone()[0]
        if acquired or time.monotonic() + settings.CHAIN_SCAN_POLL_SECONDS > give_up_at:
            break
        time.sleep(settings.CHAIN_SCAN_POLL_SECONDS)
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as c:
                c.execute("SELECT pg_advisory_unlock(%s)", [target.lock_key])


# -- the scan loop ---------------------------------------------------------------------------
class _ReorgDetected(Exception):
    pass


def scan_chain(
    *, client: RpcClient | None = None, max_seconds: float | None = None, follow_seconds: float = 0.0,
    lock_wait_seconds: float = 0.0, actor: str = "scanner",
) -> ScanReport:
    client = client or get_rpc_client()
    target = _target()
    max_seconds = settings.CHAIN_SCAN_MAX_SECONDS if max_seconds is None else max_seconds
    with scan_lock(target, lock_wait_seconds) as acquired:
        if not acquired:
            metrics.SCANS_SKIPPED.inc()
            return ScanReport(skipped=True)
        report = ScanReport()
        started = time.monotonic()
        deadline = started + max_seconds
        follow_until = None
        while True:
            try:
                caught_up = _scan_pass(client, target, report, deadline, actor)
            except Exception as exc:
                _record_scan_failure(target, exc)
                _avoid_endpoint_of(client, exc)
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


def _record_scan_failure(target: _Target, exc: Exception) -> None:
    """Keep why the pass failed on the cursor (console, health): a failure that repeats every
    beat (a node that keeps answering wrong, a booking whose rebuild cannot be applied) is
    otherwise only a growing lag."""
    metrics.SCAN_FAILURES.labels(type(exc).__name__).inc()
    try:
        SyncCursor.objects.filter(chain_id=target.chain_id, contract_address=target.contract).update(
            last_error=f"{type(exc).__name__}: {exc}"[:2000], last_error_at=timezone.now()
        )
    except db.Error:  # the database may be what failed: the original error is what matters
        log.exception("could not record the scan failure (%s) on the cursor", exc)


def _avoid_endpoint_of(client: RpcClient, exc: Exception) -> None:
    """An answer `batch` accepted that the database then showed wrong (logs an incomplete
    eth_getLogs left out, see _ingest): its endpoint cools down, so the next pass asks the
    others instead of being refused by the same node beat after beat."""
    if isinstance(exc, RpcInconsistentAnswer) and exc.endpoint:
        client.report_inconsistent(exc.endpoint, exc)


def _final_block(tip) -> int:
    by_depth = tip.latest.number - settings.REORG_WINDOW
    if tip.finalized is not None:
        return min(tip.finalized.number, by_depth)
    return by_depth


def _scan_pass(client, target: _Target, report: ScanReport, deadline: float, actor: str) -> bool:
    """Scan from the cursor to the confirmed head. True when caught up (or halted)."""
    cursor = get_cursor(target)
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
        if not _roll_back_reorg(client, target, cursor, tip.latest.number, report, actor):
            return True
        cursor = get_cursor(target)
    confirmed = tip.latest.number - settings.CHAIN_CONFIRMATIONS
    with _Prefetcher(client, target, final) as prefetcher:
        return _scan_ranges(client, target, cursor, tip, final, confirmed, prefetcher, report, deadline, actor)


def _scan_ranges(client, target, cursor, tip, final, confirmed, prefetcher, report, deadline, actor) -> bool:
    """Fetch range after range from the cursor to `confirmed` and hand each to the apply lanes.

    The loop runs ahead of the database: `cursor` is moved locally as soon as a range is
    handed over, and read back from the database whenever the ranges in flight had to be
    waited for (a refused range, a reorg, a range that did not commit).
    """
    parallel = settings.CHAIN_APPLY_PARALLEL and not connection.in_atomic_block
    with _heap_frozen(), _ApplyLanes(parallel, report) as lanes:
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
            if cursor.last_scan_at is None and confirmed - cursor.last_block > _PROBE_BLOCKS * _MAX_GROWTH:
                # A cursor that never scanned knows nothing of the log density: before a long
                # catch-up, probe a block and size from what it holds (_next_range_size),
                # rather than ask a node without a result cap for a whole default range
                # (100,000s of logs in one answer). A short gap is read whole, as any range.
                size = cursor.range_size = min(size, _PROBE_BLOCKS)
            to_block = min(from_block + size - 1, confirmed)
            try:
                fetched = prefetcher.take(cursor, from_block, to_block, report)
            except (LogRangeTooLarge, RpcUnavailable, _ReorgDetected) as exc:
                # Handled from where the database stands: let the ranges in flight finish first.
                _settle(lanes, cursor)
                if cursor.last_block + 1 != from_block:
                    continue  # a range in flight did not commit: start again from the cursor
                if isinstance(exc, LogRangeTooLarge):
                    _shrink(cursor, from_block, to_block, exc.suggested_to, report)
                elif isinstance(exc, RpcUnavailable):
                    if not (exc.timed_out and to_block > from_block):
                        raise
                    _shrink(cursor, from_block, to_block, None, report)
                else:
                    if not _roll_back_reorg(client, target, cursor, tip.latest.number, report, actor):
                        return True
                    cursor = get_cursor(target)
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
                lanes.submit(target, cursor.pk, fetched, tip, final, actor, last=to_block >= confirmed)
            except handlers.Superseded as exc:
                log.info("scan range %d-%d superseded (%s); continuing from the cursor", from_block, to_block, exc)
                _settle(lanes, cursor)
                continue
            if following and lanes.parallel:
                prefetcher.start(*following)
            cursor.last_block, cursor.last_block_hash = to_block, fetched.last_header.hash
            cursor.range_size, cursor.last_scan_at = fetched.next_size, timezone.now()
    _note_position(cursor, tip, final, report)
    return True


def _close_connection() -> None:
    connection.close()


def _settle(lanes: "_ApplyLanes", cursor: SyncCursor) -> None:
    """Wait for the ranges in flight and read the cursor back from the database. A range that
    was superseded (the one before it failed) only means the loop goes on from the cursor;
    any other failure is raised."""
    try:
        lanes.drain()
    except handlers.Superseded as exc:
        log.info("scan ranges in flight superseded (%s); continuing from the cursor", exc)
    cursor.refresh_from_db()


#: How long a range waits for the one before it to commit before giving up (and rolling back).
_TURN_TIMEOUT_SECONDS = 120.0


class _RangeTurn(handlers.ApplyTurn):
    """The turn of one range applied in a lane (see handlers.ApplyTurn)."""

    def __init__(self, previous: "_RangeTurn | None"):
        self.previous = previous
        self.started = threading.Event()  # bookings locked, or finished: the next range may start
        self.done = threading.Event()
        self.committed = False

    def locked(self) -> None:
        self.started.set()

    def wait(self) -> None:
        previous = self.previous
        if previous is None:
            return
        if not previous.done.wait(timeout=_TURN_TIMEOUT_SECONDS):
            raise handlers.Superseded("timed out waiting for the range before to commit")
        if not previous.committed:
            raise handlers.Superseded("the range before did not commit")
        self.previous = None  # committed: nothing left to wait for (and no chain of turns kept alive)

    def finish(self, committed: bool) -> None:
        self.committed = committed
        self.started.set()
        self.done.set()


class _ApplyLanes:
    """Applies fetched ranges in chain order, each in its own transaction.

    In parallel mode two lanes (threads, each with its own database connection) take turns:
    range N+1 starts once range N holds its bookings' row locks, so N+1's inserts, reads,
    planning and booking writes overlap N's writes and commit (the database works on two
    cores, Python plans while the database writes). Order and exactly-once are kept by the
    turn (handlers.ApplyTurn): N+1 writes the rows two ranges may share (earnings, orphans,
    block window) and moves the cursor only after N committed, and rolls back if N did not;
    the cursor update itself checks it continues from N's last block. A booking in both
    ranges is locked by N first, so N+1 waits for N's commit and folds N's events too.

    Without parallel mode (a caller's transaction is open, e.g. tests, or the setting is
    off) each range is applied in line, on the caller's connection.
    """

    def __init__(self, parallel: bool, report: ScanReport):
        self.parallel = parallel
        self.report = report
        self._lanes: list[ThreadPoolExecutor] = []
        self._in_flight: deque[tuple[object, _RangeTurn]] = deque()
        self._submitted = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.drain()  # the ranges in flight end before their connections close
        except Exception:
            if exc_type is None:
                raise  # otherwise the exception already on its way out is the one to report
        finally:
            for lane in self._lanes:
                lane.submit(_close_connection).result()  # in the lane's thread: its own connection
                lane.shutdown(wait=True)
        return False

    def submit(
        self, target: _Target, cursor_pk: int, fetched: _FetchedRange, tip, final: int, actor: str, *, last: bool
    ) -> None:
        """Apply `fetched` (in line, or hand it to a lane). `last`: no range follows it in this
        pass; a lone range (following the head) is applied in line, without lane threads."""
        if not self.parallel or (last and not self._in_flight):
            self.report.count(_apply_range(target, cursor_pk, fetched, tip, final, actor, handlers.NO_TURN))
            return
        if not self._lanes:
            self._lanes = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scan-apply-{i}") for i in range(2)]
        turn = _RangeTurn(self._in_flight[-1][1] if self._in_flight else None)
        lane = self._lanes[self._submitted % len(self._lanes)]
        self._submitted += 1
        self._in_flight.append((lane.submit(self._run, target, cursor_pk, fetched, tip, final, actor, turn), turn))
        turn.started.wait()
        self._collect(block=False)

    @staticmethod
    def _run(target, cursor_pk, fetched, tip, final, actor, turn: _RangeTurn) -> LogsOutcome:
        committed = False
        try:
            outcome = _apply_range(target, cursor_pk, fetched, tip, final, actor, turn)
            committed = True
            return outcome
        finally:
            turn.finish(committed)

    def drain(self) -> None:
        """Wait for every range in flight; count what committed; raise the first real failure."""
        self._collect(block=True)

    def _collect(self, *, block: bool) -> None:
        failure = superseded = None
        while self._in_flight and (block or failure or superseded or self._in_flight[0][0].done()):
            future, _ = self._in_flight.popleft()
            try:
                outcome = future.result()
            except handlers.Superseded as exc:
                superseded = superseded or exc
                continue
            except Exception as exc:
                failure = failure or exc
                continue
            self.report.count(outcome)
        if failure is not None:
            raise failure
        if superseded is not None:
            raise superseded


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


def _smaller_range_size(from_block: int, to_block: int, suggested_to: int | None) -> int:
    """After [from_block, to_block] was refused: the provider's suggested range when it names
    one inside it, otherwise half (at least one block)."""
    if suggested_to is not None and from_block <= suggested_to < to_block:
        return suggested_to - from_block + 1
    return max(1, (to_block - from_block + 1) // 2)


def _shrink(cursor: SyncCursor, from_block: int, to_block: int, suggested_to: int | None, report: ScanReport) -> None:
    """A refused range: take the provider's suggestion when it names one, otherwise halve."""
    span = to_block - from_block + 1
    report.range_ceiling = span if report.range_ceiling is None else min(report.range_ceiling, span)
    cursor.range_size = _smaller_range_size(from_block, to_block, suggested_to)
    SyncCursor.objects.filter(pk=cursor.pk).update(range_size=cursor.range_size)
    report.range_shrinks += 1
    metrics.RANGE_SHRINKS.inc()
    log.info("eth_getLogs range %d-%d refused; range now %d blocks", from_block, to_block, cursor.range_size)


def _window_headers(client, parent_hash: str, from_block: int, to_block: int, final: int) -> dict[int, BlockHeader]:
    """Headers of the range's unfinalized blocks (batched), checked to chain onto `parent_hash`
    (the cursor's block hash)."""
    first = max(from_block, final + 1)
    if first > to_block:
        return {}
    headers = _headers_in_batches(client, list(range(first, to_block + 1)))
    previous = parent_hash if first == from_block else None
    for number in range(first, to_block + 1):
        header = headers[number]
        if previous and header.parent_hash != previous:
            if number == from_block:
                raise _ReorgDetected(f"block {number} does not build on the cursor's block")
            # Headers of one answer that do not chain: a node switching forks mid-batch.
            raise RpcUnavailable("headers of the range do not chain") from RpcInconsistentAnswer("fork mid-batch")
        previous = header.hash
    return headers


def _headers_in_batches(client, numbers: list[int]) -> dict[int, BlockHeader]:
    headers: dict[int, BlockHeader] = {}
    batch = settings.CHAIN_HEADER_BATCH
    for start in range(0, len(numbers), batch):
        headers.update(get_headers(client, numbers[start:start + batch]))
    return headers


class _CanonicalHashes:
    """Canonical block hashes for `_ingest`'s check of stale rows: those of the headers the
    caller already fetched, the others asked from the node (batched) when a stale row needs
    them. Rare: only rows stored ahead of the scanner (fast path, replay) that an answer
    lacks, in blocks whose header the caller does not hold (already final, or replayed)."""

    def __init__(self, client, known: dict[int, str] | None = None):
        self._client, self._known = client, dict(known or {})

    def of(self, numbers) -> dict[int, str]:
        numbers = set(numbers)
        missing = sorted(numbers - self._known.keys())
        if missing:
            self._known.update({n: h.hash for n, h in _headers_in_batches(self._client, missing).items()})
        return {n: self._known[n] for n in numbers}


@dataclass
class _FetchedRange:
    from_block: int
    to_block: int
    headers: dict[int, BlockHeader]
    last_header: BlockHeader
    logs: list[DecodedLog]
    next_size: int  # range size to continue with (from the density of this range)
    seconds: float  # spent fetching and decoding
    canonical: _CanonicalHashes  # the headers above, the last one, and the node for others
    answered_by: str  # the endpoint whose eth_getLogs answer `logs` are


class _Prefetcher:
    """Fetches (eth_getLogs + headers) and decodes the next range in a background thread while
    the current one is written to the database: the node's and PostgreSQL's time overlap.

    The thread touches no database and no Django state: it only runs `_fetch_range`. A
    prefetched range is used only if it is exactly the range the loop asks for next, with
    the cursor hash it was checked against; its errors (range refused, reorg, RPC failure)
    surface when it is taken, where the loop handles them as for a range fetched in line.
    """

    def __init__(self, client, target: _Target, final: int):
        self.client, self.target, self.final = client, target, final
        self._executor = None
        self._pending = None  # ((parent_hash, from_block, to_block), Future)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._drop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        return False

    def _drop(self) -> None:
        if self._pending is not None:
            _, future = self._pending
            self._pending = None
            if not future.cancel():
                future.exception()  # wait: one range is fetched at a time (and its memory freed)

    def start(self, parent_hash: str, from_block: int, to_block: int, size: int, report: ScanReport) -> None:
        self._drop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-prefetch")
        ceiling = report.range_ceiling
        future = self._executor.submit(
            _fetch_range, self.client, self.target, parent_hash, from_block, to_block, self.final, ceiling, size=size
        )
        self._pending = ((parent_hash, from_block, to_block), future)

    def take(self, cursor: SyncCursor, from_block: int, to_block: int, report: ScanReport) -> _FetchedRange:
        pending, self._pending = self._pending, None
        if pending is not None:
            key, future = pending
            if key == (cursor.last_block_hash, from_block, to_block):
                return future.result()
            if not future.cancel():
                future.exception()
        return _fetch_range(
            self.client, self.target, cursor.last_block_hash, from_block, to_block, self.final,
            report.range_ceiling, size=cursor.range_size,
        )


def _fetch_range(
    client, target: _Target, parent_hash: str, from_block: int, to_block: int, final: int, ceiling: int | None,
    *, size: int,
) -> _FetchedRange:
    """Headers of the range's unfinalized blocks, its logs (checked against the header of its
    last block) and their decoding. No database access (runs in the prefetch thread)."""
    started = time.perf_counter()
    headers = _window_headers(client, parent_hash, from_block, to_block, final)
    raw_logs, last_header, answered_by = get_logs_checked(
        client,
        address=target.contract,
        topics=[BOOKING_EVENT_TOPICS],
        from_block=from_block,
        to_block=to_block,
        held_hashes={n: h.hash for n, h in headers.items()},
        max_answer_bytes=settings.CHAIN_LOG_MAX_ANSWER_BYTES,
    )
    max_results = settings.CHAIN_LOG_MAX_RESULTS
    span = to_block - from_block + 1
    results = len(raw_logs)
    if results > max_results and to_block > from_block:
        del raw_logs  # not kept alive by the exception's traceback
        # More than a provider would hand out: fetch it again in smaller pieces (also bounds
        # memory), sized for the density just seen.
        raise LogRangeTooLarge(
            f"{results} logs in {from_block}-{to_block}",
            suggested_to=from_block + max(1, span * _target_results() // results) - 1,
        )
    logs = decode_logs(raw_logs, contract_address=target.contract)
    del raw_logs
    for decoded in logs:
        decoded.args_json()  # cached on the log: rendered here, in the prefetch thread, not while storing
    next_size = _next_range_size(size, span, results, ceiling)
    canonical = _CanonicalHashes(client, {n: h.hash for n, h in headers.items()} | {last_header.number: last_header.hash})
    return _FetchedRange(
        from_block, to_block, headers, last_header, logs, next_size, time.perf_counter() - started, canonical,
        answered_by,
    )


def _apply_range(target, cursor_pk: int, fetched: _FetchedRange, tip, final, actor, turn) -> LogsOutcome:
    """Store and apply one fetched range and move the cursor past it: ONE transaction.

    The cursor moves only if it stands at the block before the range (a staff rewind or a
    range before this one that did not commit makes this range roll back: Superseded)."""
    started = time.perf_counter()
    from_block, to_block, last_header = fetched.from_block, fetched.to_block, fetched.last_header
    now = timezone.now()
    with transaction.atomic():
        outcome = _ingest(
            target, fetched.logs, from_block, to_block, source=EventSource.SCANNER, actor=actor, now=now, turn=turn,
            canonical=fetched.canonical, answered_by=fetched.answered_by,
        )
        turn.wait()
        _store_window(cursor_pk, fetched.headers, final)
        moved = SyncCursor.objects.filter(pk=cursor_pk, last_block=from_block - 1).update(
            last_block=to_block, last_block_hash=last_header.hash, range_size=fetched.next_size,
            head_block=tip.latest.number, finalized_block=final, last_scan_at=now,
        )
        if not moved:
            raise handlers.Superseded(f"the cursor is no longer at block {from_block - 1}")
    metrics.RANGE_SECONDS.observe(time.perf_counter() - started + fetched.seconds)
    return outcome


#: First range of a cursor that never scanned (see _scan_ranges): one block, so even a node
#: without a result cap answers a dense chain's probe with one block's logs, not thousands.
_PROBE_BLOCKS = 1
#: Most a range may grow in one step (a sparse stretch says little about what follows).
_MAX_GROWTH = 4


def _target_results() -> int:
    """Logs per range to aim for: a quarter of the provider cap. It leaves room for denser
    stretches (a refused or oversized range costs a whole round trip) and bounds memory:
    during a catch-up up to three ranges are alive at once (two in the apply lanes, the next
    one being fetched, see _scan_ranges); benchmarks/bench_catchup.py's ranges (one block,
    2,000 logs) leave the scanner's resident memory within ~40 MiB of where it started."""
    return max(1, settings.CHAIN_LOG_MAX_RESULTS // 4)


def _next_range_size(size: int, span: int, results: int, range_ceiling: int | None) -> int:
    """The range after one of `span` blocks that returned `results` logs.

    Proportional to the density seen (aiming at _target_results), growing at most
    _MAX_GROWTH-fold a step (2-fold once a range was refused this run), never past
    CHAIN_LOG_RANGE_MAX nor the smallest range refused this run; a short range (the head
    was near) shrinks the size only when it was dense.
    """
    if range_ceiling is None:
        limit, growth = settings.CHAIN_LOG_RANGE_MAX, _MAX_GROWTH
    else:
        # Refused this run: creep back up slowly, staying below the smallest refused range.
        limit, growth = range_ceiling - 1, 2
    target = _target_results()
    wanted = span * target // results if results else span * growth
    wanted = max(1, min(wanted, span * growth, limit))
    if span < size and wanted < size and results <= target:
        return size  # a short range (head reached) below the target says nothing against the size
    return wanted


def _store_window(cursor_pk: int, headers: dict[int, BlockHeader], final: int) -> None:
    """Remember the unfinalized blocks' hashes; forget those that became final."""
    with server_binding_cursor() as c:
        c.execute(f"DELETE FROM {BlockHash._meta.db_table} WHERE cursor_id = %s AND number <= %s", [cursor_pk, final])
        if headers:
            numbers = sorted(headers)
            c.execute(
                f"""INSERT INTO {BlockHash._meta.db_table} (cursor_id, number, hash, parent_hash)
                    SELECT %s, u.number, u.hash, u.parent_hash
                    FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(number, hash, parent_hash)
                    ON CONFLICT (cursor_id, number) DO UPDATE SET hash = EXCLUDED.hash,
                        parent_hash = EXCLUDED.parent_hash""",
                [cursor_pk, numbers, [headers[n].hash for n in numbers], [headers[n].parent_hash for n in numbers]],
            )


def _ingest(
    target: _Target, logs: list[DecodedLog], from_block: int | None, to_block: int | None, *, source: str,
    actor: str, now, reapply_all: bool = False, status_source: str | None = None,
    turn: handlers.ApplyTurn = handlers.NO_TURN, canonical: _CanonicalHashes | None = None,
    only_bookings: list[str] | None = None, answered_by: str = "",
) -> LogsOutcome:
    """Store `logs` and apply what they change. Runs inside the caller's transaction.

    With a block range (and `canonical`, the hashes of the range's canonical blocks), rows
    stored for it that the canonical logs lack are marked REMOVED, unless a row's block is
    still on the chain (its hash is the canonical one): then the logs are an incomplete
    answer (a node that has not indexed the block yet) and RpcInconsistentAnswer is raised,
    naming `answered_by`, the endpoint that gave the logs. reapply_all re-derives every
    booking the logs touch (replay, reconciliation), not only those with newly stored rows.
    `only_bookings`: the logs are all those of these bookings in the range; only their rows
    can be stale, and each is re-derived (a failure raised) even if none of its rows changed.
    """
    outcome = LogsOutcome(logs=len(logs))
    if reapply_all:
        # Replay, reconciliation, the fast path and rebuilds meet rows stored already, and
        # storing a log revives a row a reorg removed (an UPDATE: a row lock): their bookings
        # are locked first, the order every writer keeps (handlers.lock_chain_bookings). The
        # scanner's ranges skip that statement (catch-up: all new rows); rows they meet
        # unchanged are not locked (store.insert_events), and a revived one, rare, may wait:
        # a deadlock there aborts the range, which the next pass scans again.
        handlers.lock_chain_bookings(
            target.chain_id, target.contract, {log.chain_booking_id for log in logs} | set(only_bookings or ())
        )
    inserted = store.insert_events(target.chain_id, target.contract, logs, source=source, now=now)
    outcome.inserted = sum(len(ids) for ids in inserted.values())
    stale: list[store.LiveRow] = []
    if from_block is not None:
        stale = store.stale_events(
            target.chain_id, target.contract, from_block, to_block, logs, now=now, chain_booking_ids=only_bookings
        )
        hashes = canonical.of(row.block_number for row in stale) if stale else {}
        for row in stale:
            if hashes[row.block_number] == row.block_hash:
                # Same block, same receipts: the log is still there and the answer left it out.
                raise RpcInconsistentAnswer(
                    f"the logs of blocks {from_block}-{to_block} lack a stored log of block {row.block_number}, "
                    "which is still on the chain (incomplete answer)", endpoint=answered_by,
                )
    touched: dict[str, list[DecodedLog]] = {}
    wanted = None if reapply_all else inserted
    for event in logs:
        if wanted is None or event.chain_booking_id in wanted:
            touched.setdefault(event.chain_booking_id, []).append(event)
    for chain_booking_id in only_bookings or ():
        touched.setdefault(chain_booking_id, [])
    removed: dict[str, list[int]] = {}
    if stale:
        for row in stale:
            touched.setdefault(row.chain_booking_id, [])
        turn.wait()  # their bookings may be in the range before: lock nothing of theirs ahead of it
        # Every booking this call applies, locked in id order before their rows are marked
        # (see handlers.lock_chain_bookings); apply_events below re-takes them.
        handlers.lock_chain_bookings(target.chain_id, target.contract, touched)
        removed = store.mark_removed([row.id for row in stale], now=now)
        outcome.removed = sum(len(ids) for ids in removed.values())
    outcome.booking_ids = list(touched)
    if touched:
        kwargs = {"status_source": status_source} if status_source else {}
        outcome.add(
            handlers.apply_events(
                chain_id=target.chain_id, contract=target.contract, touched=touched, new_event_ids=inserted,
                actor=actor, now=now, turn=turn,
                # Re-derived only because rows of theirs were removed: no new row to mark FAILED,
                # so a failure rolls the range back (retried next pass) rather than being lost.
                must_apply=frozenset(cid for cid in removed if not inserted.get(cid)) | frozenset(only_bookings or ()),
                **kwargs,
            )
        )
    return outcome


# -- reorgs ------------------------------------------------------------------------------------
def _roll_back_reorg(client, target: _Target, cursor: SyncCursor, head: int, report: ScanReport, actor: str) -> bool:
    """Roll back to the common ancestor. False when it lies below the window (cursor halted)."""
    window = list(
        BlockHash.objects.filter(cursor=cursor, number__lte=min(cursor.last_block, head))
        .order_by("-number")
        .values_list("number", "hash")
    )
    canonical: dict[int, BlockHeader] = {}
    batch = settings.CHAIN_HEADER_BATCH
    numbers = [n for n, _ in window]
    ancestor = None
    # Newest first, a batch at a time: a shallow reorg costs one round trip.
    for start in range(0, len(numbers), batch):
        chunk = numbers[start:start + batch]
        canonical.update(get_headers(client, chunk))
        for number, held in window[start:start + batch]:
            if canonical[number].hash == held:
                ancestor = (number, held)
                break
        if ancestor:
            break
    if ancestor is None:
        reason = (
            f"reorg below the unfinalized window: block {cursor.last_block} ({cursor.last_block_hash}) is no longer "
            f"canonical and none of the {len(window)} block hashes held is; rewind the cursor by hand"
        )
        SyncCursor.objects.filter(pk=cursor.pk).update(halted=True, halt_reason=reason, halted_at=timezone.now())
        metrics.DEEP_REORGS.inc()
        log.critical("scanner halted: %s", reason)
        report.halted = True
        report.errors.append(reason)
        return False
    number, held = ancestor
    depth = cursor.last_block - number
    now = timezone.now()
    with transaction.atomic():
        rows = store.live_events_above(target.chain_id, target.contract, number)
        # Their bookings first, their event rows after: the order every writer locks in.
        handlers.lock_chain_bookings(target.chain_id, target.contract, [row.chain_booking_id for row in rows])
        removed = store.mark_removed([row.id for row in rows], now=now)
        if removed:
            outcome = handlers.apply_events(
                chain_id=target.chain_id, contract=target.contract, touched={cid: [] for cid in removed},
                actor=f"{actor}:reorg", now=now,
                # No event is left to mark FAILED for a booking whose rebuild fails: abort the
                # whole rollback (the next pass tries again) rather than keep its stale money state.
                must_apply=frozenset(removed),
            )
            report.bookings += outcome.bookings
        BlockHash.objects.filter(cursor=cursor, number__gt=number).delete()
        SyncCursor.objects.filter(pk=cursor.pk).update(last_block=number, last_block_hash=held)
    removed_count = sum(len(ids) for ids in removed.values())
    report.removed += removed_count
    report.reorgs.append(depth)
    metrics.REORGS.inc()
    metrics.REORG_DEPTH.observe(depth)
    log.warning(
        "reorg: rolled back %d block(s) to %d (%s); %d event(s) removed, %d booking(s) re-derived",
        depth, number, held, removed_count, len(removed),
    )
    return True


# -- entry points for other callers --------------------------------------------------------------
def apply_logs(
    raw_logs: list[dict], *, source: str = EventSource.RECONCILIATION, actor: str = "",
    status_source: str | None = None,
) -> LogsOutcome:
    """Store and apply raw logs from any fetch (reconciliation's bookingId-filtered eth_getLogs).

    Every booking the logs mention is re-derived from all its stored events and applied
    (idempotent: a booking already in line changes nothing). BookingStatusChange rows get
    `status_source` (default: `reconciliation` when source is reconciliation, else `chain`).
    """
    return apply_decoded_logs(
        decode_logs(raw_logs, contract_address=_target().contract), source=source, actor=actor,
        status_source=status_source,
    )


def apply_decoded_logs(
    logs: list[DecodedLog], *, source: str = EventSource.RECONCILIATION, actor: str = "",
    status_source: str | None = None,
) -> LogsOutcome:
    """`apply_logs` for logs already decoded (the receipt fast path decodes them first)."""
    target = _target()
    if status_source is None:
        status_source = "reconciliation" if source == EventSource.RECONCILIATION else "chain"
    now = timezone.now()
    with transaction.atomic():
        return _ingest(
            target, logs, None, None, source=source, actor=actor or str(source), now=now, reapply_all=True,
            status_source=status_source,
        )


def rebuild_bookings(
    chain_booking_ids: list[str], raw_logs: list[dict], *, to_block: int, client: RpcClient, actor: str,
    status_source: str,
) -> LogsOutcome:
    """Make these bookings' stored events what the chain holds up to `to_block`, and re-derive
    the bookings from them: the way out for a booking the database has ahead of the chain
    (a staff action, reconciliation.services.rebuild_booking_from_chain).

    `raw_logs` are all their logs up to `to_block` (reconciliation.services.fetch_booking_logs).
    Logs not stored yet are stored; stored rows they lack are marked REMOVED if their block left
    the chain, while a row whose block is still canonical means the answer is incomplete
    (RpcInconsistentAnswer); every booking is re-derived even if none of its rows changed (a
    status the database took on its own goes back to what its events say), and a booking that
    cannot be re-derived raises. Runs inside the caller's transaction.
    """
    target = _target()
    wanted = set(chain_booking_ids)
    logs = [log for log in decode_logs(raw_logs, contract_address=target.contract) if log.chain_booking_id in wanted]
    return _ingest(
        target, logs, 0, to_block, source=EventSource.RECONCILIATION, actor=actor, now=timezone.now(),
        reapply_all=True, status_source=status_source, canonical=_CanonicalHashes(client),
        only_bookings=sorted(wanted),
    )


def replay_range(
    from_block: int, to_block: int | None = None, *, client: RpcClient | None = None, actor: str = "replay"
) -> ReplayReport:
    """Re-fetch [from_block, to_block] (default: the confirmed head) and re-apply it.

    Idempotent: rows already stored are kept, every booking the range mentions is re-derived
    from all its events (so FAILED/DEAD_LETTER events of those bookings apply if they can
    now), and stored rows the canonical chain lacks are marked REMOVED. The cursor does not move.
    """
    client = client or get_rpc_client()
    target = _target()
    tip = get_chain_tip(client, None)
    confirmed = tip.latest.number - settings.CHAIN_CONFIRMATIONS
    to_block = confirmed if to_block is None else min(to_block, confirmed)
    from_block = max(from_block, 0)
    report = ReplayReport(from_block=from_block, to_block=to_block)
    cursor = get_cursor(target)
    held = dict(BlockHash.objects.filter(cursor=cursor).values_list("number", "hash"))
    size = cursor.range_size
    start = from_block
    while start <= to_block:
        end = min(start + size - 1, to_block)
        try:
            raw_logs, _, answered_by = get_logs_checked(
                client, address=target.contract, topics=[BOOKING_EVENT_TOPICS], from_block=start, to_block=end,
                held_hashes={n: h for n, h in held.items() if start <= n <= end},
                max_answer_bytes=settings.CHAIN_LOG_MAX_ANSWER_BYTES,
            )
        except LogRangeTooLarge as exc:
            size = _smaller_range_size(start, end, exc.suggested_to)
            continue
        logs = decode_logs(raw_logs, contract_address=target.contract)
        try:
            with transaction.atomic():
                outcome = _ingest(
                    target, logs, start, end, source=EventSource.REPLAY, actor=actor, now=timezone.now(),
                    reapply_all=True,
                    # Replay often runs below the window: the hashes of blocks with stale rows are
                    # fetched when a row needs one.
                    canonical=_CanonicalHashes(client), answered_by=answered_by,
                )
        except RpcInconsistentAnswer as exc:
            _avoid_endpoint_of(client, exc)
            raise
        report.count(outcome)
        start = end + 1
    log.info("replayed blocks %d-%d: %s", from_block, to_block, report)
    return report


def retry_failed_events(*, now=None, limit: int = 500, actor: str = "retry") -> RetryReport:
    """Re-apply events that are due: FAILED past their backoff, RETRY (staff asked) at once.

    The rows are claimed FOR UPDATE SKIP LOCKED (after their bookings' locks), so two
    deliveries of the task never retry the same event twice. A booking that still fails
    counts one more attempt on its events (exponential backoff, DEAD_LETTER at
    CHAIN_EVENT_MAX_ATTEMPTS).
    """
    now = now or timezone.now()
    target = _target()
    report = RetryReport()
    due = ChainEvent.objects.filter(
        chain_id=target.chain_id, contract_address=target.contract,
        status__in=[EventStatus.FAILED, EventStatus.RETRY], next_retry_at__lte=now,
    ).order_by("next_retry_at", "id")
    with transaction.atomic():
        booking_ids = list(dict.fromkeys(due.values_list("chain_booking_id", flat=True)[:limit]))
        if not booking_ids:
            return report
        # Bookings (orphans) first, their event rows after: rows claimed first would deadlock
        # against a scanner applying a new event of the same booking.
        handlers.lock_chain_bookings(target.chain_id, target.contract, booking_ids)
        # SKIP LOCKED: two deliveries of the task never retry the same event twice.
        ids = list(
            due.filter(chain_booking_id__in=booking_ids).select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return report
        rows = store.load_rows(ids)
        outcome = handlers.apply_events(
            chain_id=target.chain_id, contract=target.contract,
            touched={cid: [r.event for r in events] for cid, events in rows.items()},
            new_event_ids={cid: [r.id for r in events] for cid, events in rows.items()},
            actor=actor, now=now,
        )
        failed = set(outcome.failed_bookings)
        done = [r.id for cid, events in rows.items() if cid not in failed for r in events]
        store.mark_processed(done, now=now)
    report.attempted = len(ids)
    report.processed = len(done)
    report.failed = outcome.failed_events - outcome.dead_letters
    report.dead_letters = outcome.dead_letters
    if ids:
        log.info("retried %d chain event(s): %s", len(ids), report)
    return report
