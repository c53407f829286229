"""The reconciliation run: every booking still open on our side (or finished within
RECONCILE_RECENT_SECONDS) compared with the chain, in batches, at a confirmed block.

- The chain ahead of the database (a payment, completion or cancellation the scanner missed):
  the booking's logs are fetched and applied through the chain sync's own ingest (repaired).
- The database ahead of the chain (a status set by hand, an event whose block left the chain):
  never rewritten from a guess; a ReconciliationFlag is opened and the booking marked for
  attention. Staff resolve it or rebuild the booking (reconciliation.operations).
- Any flag is raised only if the booking, read again under its row lock at flag time, still
  disagrees with the chain: the run's first read of the database may predate a writer's commit
  (the scanner rolling back a reorg). A database ahead of the chain is flagged only when every
  stored event of the booking lies at or below the scanner's cursor in a block the chain still
  has: otherwise a reorg the chain sync has not rolled back yet (or a fast-path event above the
  cursor) explains it, and the chain sync settles it. An open flag of a booking a later run finds in agreement
  is withdrawn (resolved by SYSTEM_ACTOR, its attention item closed).
- Unused payment authorizations past their expiry are expired (escrow.services).

Each run writes a ReconciliationReport and never raises for RPC trouble: the report says FAILED
and counts what was not checked. Celery beat (reconciliation/tasks.py), `manage.py reconcile`
and the console's "reconcile now" run it.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chain_events.cursor import get_cursor
from chain_events.models import ChainEvent, EventStatus
from chain_events.rpc import RpcClient, RpcError, get_headers, get_rpc_client
from escrow import attention
from escrow.chain_effects import IMPLIED_CHAIN_STATUS
from escrow.chain_state import ChainStatus
from escrow.models import AttentionKind, Booking, BookingStatus
from escrow.services import expire_unused_authorizations
from escrow.state import TERMINAL_STATUSES

from . import chain_ingest, metrics
from .chain_reads import ChainBooking, confirmed_block, fetch_booking_logs, read_chain_bookings
from .models import FlagKind, ReconciliationFlag, ReconciliationReport, ReportStatus

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "system:reconciliation"
MAX_ERROR_DETAILS = 50

# How far along the contract's state machine a chain status is (completed and cancelled are both final).
_CHAIN_RANK = {ChainStatus.NONE: 0, ChainStatus.PAID: 1, ChainStatus.COMPLETED: 2, ChainStatus.CANCELLED: 2}
_FINISHED = (*TERMINAL_STATUSES, BookingStatus.EXPIRED)


def reconciliation_candidates(now: datetime, booking_ids=None):
    """(pk, chain_booking_id) of the bookings a run checks, in pk order."""
    queryset = Booking.objects.all()
    if booking_ids is not None:
        queryset = queryset.filter(pk__in=list(booking_ids))
    else:
        recent = now - timedelta(seconds=settings.RECONCILE_RECENT_SECONDS)
        queryset = queryset.filter(~Q(status__in=_FINISHED) | Q(status_changed_at__gte=recent))
    return list(queryset.order_by("pk").values_list("pk", "chain_booking_id"))


class _Run:
    """Counters of one run, written to its report at the end."""

    def __init__(self, report: ReconciliationReport):
        self.report = report

    def error(self, count: int, message: str) -> None:
        self.report.errors += count
        if len(self.report.error_details) < MAX_ERROR_DETAILS:
            self.report.error_details.append(message[:500])


def reconcile_bookings(
    *, trigger: str = "beat", actor: str = SYSTEM_ACTOR, booking_ids=None, now: datetime | None = None
) -> ReconciliationReport:
    """Compare every non-terminal booking (and those finished within RECONCILE_RECENT_SECONDS; or
    only `booking_ids`, primary keys) with the chain in batches, repair/flag, expire unused
    authorizations (full runs only), and write a ReconciliationReport."""
    now = now or timezone.now()
    started = time.perf_counter()
    client = get_rpc_client()
    round_trips_before = client.round_trips
    report = ReconciliationReport.objects.create(trigger=trigger, actor=actor[:200])
    run = _Run(report)
    candidates = reconciliation_candidates(now, booking_ids)
    done = 0
    try:
        block = confirmed_block(client)
        report.chain_block = block
        group_size = settings.RECONCILE_BATCH_SIZE * settings.RECONCILE_CALLS_PER_REQUEST
        for start in range(0, len(candidates), group_size):
            group = candidates[start: start + group_size]
            _reconcile_group(client, group, block, run, now)
            done += len(group)
        if booking_ids is None:
            expiry = expire_unused_authorizations(now=now)
            report.expired = expiry["expired"]
            report.cancellations_lapsed = expiry["cancellation_lapsed"]
        report.status = ReportStatus.OK
    except RpcError as exc:
        # The group in hand was not applied (its repair transaction never started or rolled
        # back); everything before it is complete. The rest waits for the next run.
        run.error(len(candidates) - done, f"RPC unavailable, {len(candidates) - done} booking(s) not checked: {exc}")
        report.status = ReportStatus.FAILED
    except Exception as exc:  # a bug must still leave a finished report behind
        log.exception("reconciliation run %s failed", report.pk)
        run.error(len(candidates) - done, f"{type(exc).__name__}: {exc}")
        report.status = ReportStatus.FAILED
    finally:
        report.finished_at = timezone.now()
        report.duration_seconds = time.perf_counter() - started
        report.rpc_round_trips = client.round_trips - round_trips_before
        report.save()
        metrics.export_run(report)
    log.info("%s", report)
    return report


def reconcile_booking(booking: Booking, *, actor: str) -> ReconciliationReport:
    """The console's "reconcile now" on one booking."""
    return reconcile_bookings(trigger="admin", actor=actor, booking_ids=[booking.pk])


def _reconcile_group(client: RpcClient, group: list[tuple[int, str]], block: int, run: _Run, now) -> None:
    report = run.report
    ids = [cid for _, cid in group]
    chain = read_chain_bookings(ids, block=block, client=client)
    # The database is read after the chain: whatever the chain shows that the database does not
    # was really missed (not merely in flight through the scanner).
    db_status = dict(Booking.objects.filter(pk__in=[pk for pk, _ in group]).values_list("chain_booking_id", "status"))
    report.checked += len(ids)
    behind, ahead, conflicting = [], [], []
    agreeing = []  # their open flags, if any, are withdrawn at the end
    for cid in ids:
        if cid not in db_status:
            report.checked -= 1  # deleted meanwhile
            continue
        implied = IMPLIED_CHAIN_STATUS[db_status[cid]]
        actual = chain[cid].status
        if actual == implied:
            report.in_agreement += 1
            agreeing.append(cid)
        elif _CHAIN_RANK[actual] > _CHAIN_RANK[implied]:
            behind.append(cid)
        elif _CHAIN_RANK[actual] < _CHAIN_RANK[implied]:
            ahead.append(cid)
        else:
            conflicting.append(cid)
    latest: dict[str, ChainBooking] = {}
    if ahead:
        # The database may have moved past our snapshot block (scanner near the head): only
        # what is still ahead of the chain's latest state is a real difference.
        latest = read_chain_bookings(ahead, block="latest", client=client)
        still = []
        for cid in ahead:
            if _agrees(db_status[cid], chain[cid], latest.get(cid)):
                report.in_agreement += 1
                agreeing.append(cid)
            else:
                still.append(cid)
        ahead = still
    if ahead:
        ahead = _left_by_the_chain_sync(client, ahead)
    to_repair = behind + conflicting
    raw_logs = fetch_booking_logs(to_repair, to_block=block, client=client) if to_repair else []
    with transaction.atomic():  # repairs and flags of this group: all or nothing
        if to_repair:
            # The scanner's own store + fold (source "reconciliation"): idempotent with the scanner.
            outcome = chain_ingest.apply_repair_logs(raw_logs, actor=SYSTEM_ACTOR)
            if outcome.failed_events:
                run.error(outcome.failed_events, f"{outcome.failed_events} event(s) failed to apply (see chain events)")
        for cid in ahead:
            _flag(cid, FlagKind.DATABASE_AHEAD, chain[cid], block, run, latest=latest.get(cid))
    if to_repair:
        after = dict(Booking.objects.filter(chain_booking_id__in=to_repair).values_list("chain_booking_id", "status"))
        unrepaired = []
        for cid in to_repair:
            implied_after = IMPLIED_CHAIN_STATUS[after[cid]]
            # Past the chain's state at `block` counts too: the scanner may have applied a later
            # event (a completion after the payment repaired here) before this re-read.
            if implied_after == chain[cid].status or _CHAIN_RANK[implied_after] > _CHAIN_RANK[chain[cid].status]:
                report.repaired += 1
                if implied_after == chain[cid].status:
                    agreeing.append(cid)
            else:
                unrepaired.append(cid)
        with transaction.atomic():
            for cid in unrepaired:
                kind = FlagKind.CONFLICT if cid in conflicting else FlagKind.UNREPAIRED
                _flag(cid, kind, chain[cid], block, run, why="its logs did not bring the booking in line")
    if agreeing:
        _withdraw_flags(agreeing, chain, latest, block, run)


def _left_by_the_chain_sync(client: RpcClient, ahead: list[str]) -> list[str]:
    """The bookings of `ahead` whose stored events all lie at or below the scanner's cursor, in
    blocks the chain still has: only there is a database ahead of the chain a difference for staff.
    Any other is the chain sync's to settle: an event in a block a reorg replaced that the scanner
    has not rolled back yet, or one the fast path stored above the cursor (the scanner removes what
    left the chain and re-derives the booking). Found by the chaos run: one run just after a reorg
    flagged 72 bookings the scanner rolled back moments later."""
    cursor = get_cursor().last_block
    events = list(
        ChainEvent.objects.filter(chain_booking_id__in=ahead)
        .exclude(status=EventStatus.REMOVED)
        .values_list("chain_booking_id", "block_number", "block_hash")
    )
    headers = get_headers(client, sorted({number for _, number, _ in events if number <= cursor}))
    unsettled = {
        booking for booking, number, block_hash in events
        if number > cursor or headers[number].hash != block_hash.lower()
    }
    if unsettled:
        log.info("%d booking(s) ahead of the chain left to the chain sync (events above its cursor %d or in "
                 "blocks the chain replaced)", len(unsettled), cursor)
    return [booking for booking in ahead if booking not in unsettled]


def _agrees(status: str, chain: ChainBooking, latest: ChainBooking | None = None) -> bool:
    """A booking status agrees with the chain at the run's block, or (read at the chain's latest
    block too) is no further along than the chain is now: the scanner merely got there first."""
    implied = IMPLIED_CHAIN_STATUS[status]
    if implied == chain.status:
        return True
    return latest is not None and _CHAIN_RANK[latest.status] >= _CHAIN_RANK[implied]


def _flag(
    chain_booking_id: str, kind: str, chain: ChainBooking, block: int, run: _Run, *,
    latest: ChainBooking | None = None, why: str = "",
) -> None:
    """Open a flag (one open flag per booking and kind) and mark the booking for attention, if the
    booking, read again under its row lock, still disagrees with the chain. The run's read of the
    database may be stale: a writer (the scanner rolling back a reorg, the fast path) that held the
    lock meanwhile may have brought the booking in line, and its commit is what this read waits for."""
    booking = Booking.objects.select_for_update().get(chain_booking_id=chain_booking_id)
    implied = IMPLIED_CHAIN_STATUS[booking.status]
    if _agrees(booking.status, chain, latest):
        run.report.in_agreement += 1
        return
    if kind == FlagKind.UNREPAIRED and _CHAIN_RANK[implied] > _CHAIN_RANK[chain.status]:
        run.report.repaired += 1  # past the chain at `block`: the scanner applied a later event meanwhile
        return
    detail = f"database says {booking.status} but the chain shows {chain.status} at block {block}"
    if why:
        detail += f"; {why}"
    flag, created = ReconciliationFlag.objects.get_or_create(
        booking=booking, kind=kind, resolved_at=None,
        defaults={"report": run.report, "database_status": booking.status, "chain_status": chain.status,
                  "chain_block": block, "detail": detail},
    )
    run.report.flagged += 1
    if created and attention.raise_attention(booking, AttentionKind.RECONCILIATION, detail):
        log.warning("booking %s flagged (%s): %s", booking.uuid, kind, detail)


def _withdraw_flags(
    agreeing: list[str], chain: dict[str, ChainBooking], latest: dict[str, ChainBooking], block: int, run: _Run
) -> None:
    """Open flags of bookings this run found in agreement with the chain are withdrawn (resolved by
    reconciliation), each after re-reading its booking under the row lock: a flag raised by an
    earlier run whose difference is gone (a false flag, or one the chain sync repaired since)
    would otherwise keep the booking out of auto-complete until staff looked."""
    open_flags = ReconciliationFlag.objects.filter(booking__chain_booking_id__in=agreeing, resolved_at=None)
    pending = dict(open_flags.order_by("booking_id").values_list("booking_id", "booking__chain_booking_id").distinct())
    for booking_pk, cid in pending.items():
        with transaction.atomic():
            # The booking first, its flags after: the lock order of every writer of both.
            booking = Booking.objects.select_for_update().get(pk=booking_pk)
            if not _agrees(booking.status, chain[cid], latest.get(cid)):
                continue
            now = timezone.now()
            if IMPLIED_CHAIN_STATUS[booking.status] == chain[cid].status:
                note = f"withdrawn: database ({booking.status}) and chain ({chain[cid].status}) agree at block {block}"
            else:
                note = f"withdrawn: the chain's latest block shows {latest[cid].status}, database {booking.status}"
            for flag in ReconciliationFlag.objects.select_for_update().filter(booking=booking, resolved_at=None):
                flag.resolved_at, flag.resolved_by, flag.resolution_note = now, SYSTEM_ACTOR, note
                flag.save(update_fields=["resolved_at", "resolved_by", "resolution_note"])
                attention.withdraw_attention(booking, AttentionKind.RECONCILIATION, flag.detail, by=SYSTEM_ACTOR,
                                             why=note, now=now)
                log.info("booking %s: %s flag %s", booking.uuid, flag.kind, note)
