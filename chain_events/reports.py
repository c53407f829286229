"""What the indexer's runs report: a scan, a replay, a retry, one stored batch of logs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .consumers import ApplyOutcome


@dataclass
class LogsOutcome:
    """One batch of logs stored and applied (a range, a receipt, a reconciliation fetch)."""

    logs: int = 0
    inserted: int = 0
    removed: int = 0
    bookings: int = 0
    orphans: int = 0
    failed_events: int = 0
    dead_letters: int = 0
    booking_ids: list[str] = field(default_factory=list)

    def add(self, apply: ApplyOutcome) -> None:
        self.bookings += apply.bookings
        self.orphans += apply.orphans
        self.failed_events += apply.failed_events
        self.dead_letters += apply.dead_letters


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
