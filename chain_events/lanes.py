"""Applying fetched ranges in chain order, two at once during a catch-up.

Each range is stored, applied and the cursor moved past it in ONE transaction
(`_apply_range`): a crash anywhere before the commit leaves nothing behind, and the rescan
applies it once.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from django.db import connection, transaction
from django.utils import timezone

from . import metrics
from .consumers import NO_TURN, ApplyTurn, Superseded
from .cursor import IndexedContract, hold_window, move_cursor_past
from .ingest import ingest_scanned_range
from .ranges import FetchedRange
from .reports import LogsOutcome, ScanReport

#: How long a range waits for the one before it to commit before giving up (and rolling back).
_TURN_TIMEOUT_SECONDS = 120.0


def _apply_range(
    contract: IndexedContract, cursor_pk: int, fetched: FetchedRange, tip, final: int, actor: str, turn: ApplyTurn
) -> LogsOutcome:
    """Store and apply one fetched range and move the cursor past it: ONE transaction.

    The cursor moves only if it stands at the block before the range (a staff rewind or a
    range before this one that did not commit makes this range roll back: Superseded)."""
    started = time.perf_counter()
    from_block, to_block = fetched.from_block, fetched.to_block
    now = timezone.now()
    with transaction.atomic():
        outcome = ingest_scanned_range(
            contract, fetched.logs, from_block, to_block, actor=actor, now=now, turn=turn,
            canonical=fetched.canonical, answered_by=fetched.answered_by,
        )
        turn.wait()
        hold_window(cursor_pk, fetched.headers, final)
        moved = move_cursor_past(
            cursor_pk, from_block=from_block, to_block=to_block, block_hash=fetched.last_header.hash,
            range_size=fetched.next_size, head=tip.latest.number, final=final, now=now,
        )
        if not moved:
            raise Superseded(f"the cursor is no longer at block {from_block - 1}")
    metrics.RANGE_SECONDS.observe(time.perf_counter() - started + fetched.seconds)
    return outcome


def _close_connection() -> None:
    connection.close()


class _RangeTurn(ApplyTurn):
    """The turn of one range applied in a lane (see chain_events.consumers.ApplyTurn)."""

    def __init__(self, previous: _RangeTurn | None):
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
            raise Superseded("timed out waiting for the range before to commit")
        if not previous.committed:
            raise Superseded("the range before did not commit")
        self.previous = None  # committed: nothing left to wait for (and no chain of turns kept alive)

    def finish(self, committed: bool) -> None:
        self.committed = committed
        self.started.set()
        self.done.set()


class ApplyLanes:
    """Applies fetched ranges in chain order, each in its own transaction.

    In parallel mode two lanes (threads, each with its own database connection) take turns:
    range N+1 starts once range N holds its bookings' row locks, so N+1's inserts, reads,
    planning and booking writes overlap N's writes and commit (the database works on two
    cores, Python plans while the database writes). Order and exactly-once are kept by the
    turn (chain_events.consumers.ApplyTurn): N+1 writes the rows two ranges may share
    (earnings, orphans, block window) and moves the cursor only after N committed, and rolls
    back if N did not; the cursor update itself checks it continues from N's last block. A
    booking in both ranges is locked by N first, so N+1 waits for N's commit and folds N's
    events too.

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
        self, contract: IndexedContract, cursor_pk: int, fetched: FetchedRange, tip, final: int, actor: str, *,
        last: bool,
    ) -> None:
        """Apply `fetched` (in line, or hand it to a lane). `last`: no range follows it in this
        pass; a lone range (following the head) is applied in line, without lane threads."""
        if not self.parallel or (last and not self._in_flight):
            self.report.count(_apply_range(contract, cursor_pk, fetched, tip, final, actor, NO_TURN))
            return
        if not self._lanes:
            self._lanes = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scan-apply-{i}") for i in range(2)]
        turn = _RangeTurn(self._in_flight[-1][1] if self._in_flight else None)
        lane = self._lanes[self._submitted % len(self._lanes)]
        self._submitted += 1
        self._in_flight.append((lane.submit(self._run, contract, cursor_pk, fetched, tip, final, actor, turn), turn))
        turn.started.wait()
        self._collect(block=False)

    @staticmethod
    def _run(contract, cursor_pk, fetched, tip, final, actor, turn: _RangeTurn) -> LogsOutcome:
        committed = False
        try:
            outcome = _apply_range(contract, cursor_pk, fetched, tip, final, actor, turn)
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
            except Superseded as exc:
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
