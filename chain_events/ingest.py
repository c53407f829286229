"""Storing logs and handing what they change to the consumer: one function per caller.

    ingest_scanned_range(...)    a range the scanner fetched (chain_events.lanes); the hot path
    ingest_replayed_range(...)   a range replayed by staff (chain_events.replay)
    apply_receipt_logs(...)      a receipt's logs (the fast path, escrow.fastpath)
    apply_logs(...)              logs reconciliation fetched by booking id
    rebuild_from_logs(...)       all logs of some bookings, their store made to match (staff)
    retry_failed_events(...)     stored events whose apply failed, due again
    remove_events_above(...)     a reorg's rollback (chain_events.reorg)

Each runs inside one database transaction (the caller's, or its own where it says so) over
the same steps: insert the new rows (bulk, ON CONFLICT on the log key: store.insert_events),
lock the bookings, move back in rows a reorg had removed (store.revive_events) and mark
REMOVED the rows stored for a block range whose block left the chain, then hand every
touched booking to the consumer (chain_events.consumers) with all its stored events: the
consumer folds them, so applying is idempotent and a crash before the commit leaves nothing
behind. Handing over is bulk first, all touched bookings at once in a savepoint; if that
fails, each booking in its own savepoint, so one bad event never blocks the others: the new
events of a booking that still fails are marked FAILED with backoff (DEAD_LETTER after
CHAIN_EVENT_MAX_ATTEMPTS), the rest are applied.

THE LOCK ORDER, kept by every writer here (the scanner, replay, the receipt fast path,
reconciliation, retries, a reorg's rollback) and enforced by `_apply_stored`:
  1. new event rows, inserted in key order (store.insert_events), before any lock;
  2. the bookings (then orphans) of every log touched, all at once, in id order (`_lock`,
     `EventConsumer.hold`);
  3. only then writes to event rows already stored (revive, mark REMOVED/PROCESSED/FAILED,
     retries' claim), all of them rows of bookings locked in 2.
A writer waiting in 1 holds no booking and no stored row, so nothing it holds is awaited by
one in 2 or 3: the fast path that locked a booking and then waited on the scanner's
uncommitted insert of the same log, while the scanner waited for the booking, was a deadlock
(issue 17); now both insert first.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from django.db import transaction
from django.utils import timezone

from . import metrics, store
from .consumers import NO_TURN, ApplyOutcome, ApplyTurn, EventConsumer, Superseded, get_consumer
from .cursor import IndexedContract, indexed_contract
from .decoding import DecodedLog, decode_logs
from .models import ChainEvent, EventSource, EventStatus
from .ranges import CanonicalHashes
from .reports import LogsOutcome, RetryReport
from .rpc import RpcClient, RpcInconsistentAnswer

log = logging.getLogger(__name__)


# -- one function per caller -------------------------------------------------------------------
def ingest_scanned_range(
    contract: IndexedContract, logs: list[DecodedLog], from_block: int, to_block: int, *, actor: str, now,
    turn: ApplyTurn, canonical: CanonicalHashes, answered_by: str,
) -> LogsOutcome:
    """Store a scanned range's logs and apply the bookings of the rows this call stored (or
    moved back in). `turn` orders it against the range applied in parallel (chain_events.lanes)."""
    consumer = get_consumer()
    inserted = store.insert_events(contract.chain_id, contract.contract, logs, source=EventSource.SCANNER, now=now)
    revive = _met_removed(contract, logs, inserted)
    stale = _stale_rows(contract, logs, from_block, to_block, now=now, canonical=canonical, answered_by=answered_by)
    touched: dict[str, list[DecodedLog]] = {}
    for event in logs:
        if event.chain_booking_id in inserted:
            touched.setdefault(event.chain_booking_id, []).append(event)
    return _apply_stored(
        consumer, contract, logs, inserted, touched, stale, actor=actor, now=now, turn=turn, revive=revive
    )


def ingest_replayed_range(
    contract: IndexedContract, logs: list[DecodedLog], from_block: int, to_block: int, *, actor: str, now,
    canonical: CanonicalHashes, answered_by: str,
) -> LogsOutcome:
    """Store a replayed range's logs and re-derive every booking they mention (so its
    FAILED/DEAD_LETTER events apply if they can now); stored rows the canonical chain lacks
    are marked REMOVED."""
    consumer = get_consumer()
    inserted = store.insert_events(contract.chain_id, contract.contract, logs, source=EventSource.REPLAY, now=now)
    revive = _met_removed(contract, logs, inserted)
    stale = _stale_rows(contract, logs, from_block, to_block, now=now, canonical=canonical, answered_by=answered_by)
    return _apply_stored(
        consumer, contract, logs, inserted, _by_booking(logs), stale, actor=actor, now=now, revive=revive
    )


def apply_receipt_logs(logs: list[DecodedLog], *, actor: str) -> LogsOutcome:
    """Store a receipt's decoded logs and re-derive every booking they mention, in one
    transaction. No cursor change: the scanner checks these rows when it reaches their block."""
    with transaction.atomic():
        return _store_and_apply(get_consumer(), indexed_contract(), logs, source=EventSource.RECEIPT, actor=actor)


def apply_logs(raw_logs: list[dict], *, consumer: EventConsumer, actor: str = "") -> LogsOutcome:
    """Store raw logs reconciliation fetched (any contract; only ours are kept, eth_getLogs with
    a bookingId topic filter) and re-derive every booking they mention from all its stored
    events, in one transaction (idempotent: a booking already in line changes nothing).
    `consumer`: the one to hand them to (reconciliation's, which records its changes as its own)."""
    contract = indexed_contract()
    logs = decode_logs(raw_logs, contract_address=contract.contract)
    with transaction.atomic():
        return _store_and_apply(
            consumer, contract, logs, source=EventSource.RECONCILIATION,
            actor=actor or str(EventSource.RECONCILIATION),
        )


def rebuild_from_logs(
    chain_booking_ids: list[str], raw_logs: list[dict], *, to_block: int, client: RpcClient, actor: str,
    consumer: EventConsumer,
) -> LogsOutcome:
    """Make these bookings' stored events what the chain holds up to `to_block`, and re-derive
    the bookings from them: the way out for a booking the database has ahead of the chain.

    `raw_logs` are all their logs up to `to_block`. Logs not stored yet are stored; stored rows
    they lack are marked REMOVED if their block left the chain, while a row whose block is
    still canonical means the answer is incomplete (RpcInconsistentAnswer); every booking is
    re-derived even if none of its rows changed (a status the database took on its own goes
    back to what its events say), and a booking that cannot be re-derived raises. Runs inside
    the caller's transaction. `consumer`: the one to hand them to (the staff action's, which
    records its changes as its own).
    """
    contract = indexed_contract()
    ids = set(chain_booking_ids)
    wanted = sorted(ids)
    logs = [
        event for event in decode_logs(raw_logs, contract_address=contract.contract) if event.chain_booking_id in ids
    ]
    now = timezone.now()
    inserted = store.insert_events(
        contract.chain_id, contract.contract, logs, source=EventSource.RECONCILIATION, now=now
    )
    revive = _met_removed(contract, logs, inserted)
    stale = _stale_rows(
        contract, logs, 0, to_block, now=now, canonical=CanonicalHashes(client), answered_by="",
        chain_booking_ids=wanted,
    )
    touched = _by_booking(logs)
    for chain_booking_id in wanted:
        touched.setdefault(chain_booking_id, [])
    return _apply_stored(
        consumer, contract, logs, inserted, touched, stale, actor=actor, now=now, must_apply=frozenset(wanted),
        revive=revive,
    )


def retry_failed_events(*, now=None, limit: int = 500, actor: str = "retry") -> RetryReport:
    """Re-apply events that are due: FAILED past their backoff, RETRY (staff asked) at once.

    The rows are claimed FOR UPDATE SKIP LOCKED (after their bookings' locks), so two
    deliveries of the task never retry the same event twice. A booking that still fails
    counts one more attempt on its events (exponential backoff, DEAD_LETTER at
    CHAIN_EVENT_MAX_ATTEMPTS).
    """
    now = now or timezone.now()
    contract = indexed_contract()
    consumer = get_consumer()
    report = RetryReport()
    due = ChainEvent.objects.filter(
        chain_id=contract.chain_id, contract_address=contract.contract,
        status__in=[EventStatus.FAILED, EventStatus.RETRY], next_retry_at__lte=now,
    ).order_by("next_retry_at", "id")
    with transaction.atomic():
        booking_ids = list(dict.fromkeys(due.values_list("chain_booking_id", flat=True)[:limit]))
        if not booking_ids:
            return report
        # Bookings (orphans) first, their event rows after: rows claimed first would deadlock
        # against a scanner applying a new event of the same booking.
        _lock(consumer, contract, booking_ids)
        # SKIP LOCKED: two deliveries of the task never retry the same event twice.
        ids = list(
            due.filter(chain_booking_id__in=booking_ids).select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return report
        rows = store.load_rows(ids)
        outcome = _apply(
            consumer, contract,
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
    log.info("retried %d chain event(s): %s", len(ids), report)
    return report


def remove_events_above(contract: IndexedContract, block_number: int, *, actor: str, now) -> LogsOutcome:
    """Mark every live event above `block_number` REMOVED (a reorg dropped their blocks) and
    re-derive their bookings from the events left, inside the caller's transaction.

    No event is left to mark FAILED for a booking whose rebuild fails: the failure is raised
    (the caller rolls the whole rollback back) rather than keep its stale money state."""
    consumer = get_consumer()
    outcome = LogsOutcome()
    rows = store.live_events_above(contract.chain_id, contract.contract, block_number)
    # Their bookings first, their event rows after: the order every writer locks in.
    _lock(consumer, contract, [row.chain_booking_id for row in rows])
    removed = store.mark_removed([row.id for row in rows], now=now)
    outcome.removed = sum(len(ids) for ids in removed.values())
    outcome.booking_ids = list(removed)
    if removed:
        outcome.add(_apply(
            consumer, contract, touched={cid: [] for cid in removed}, new_event_ids={}, actor=actor, now=now,
            must_apply=frozenset(removed),
        ))
    return outcome


# -- the shared steps --------------------------------------------------------------------------
def _lock(consumer: EventConsumer, contract: IndexedContract, chain_booking_ids: Iterable[str]) -> None:
    """Lock these bookings' consumer rows (sorted: every writer locks in the same order) before
    writing event rows that may exist already (see chain_events.consumers)."""
    ids = sorted(set(chain_booking_ids))
    if ids:
        consumer.lock(contract.chain_id, contract.contract, ids)


def _by_booking(logs: list[DecodedLog]) -> dict[str, list[DecodedLog]]:
    touched: dict[str, list[DecodedLog]] = {}
    for event in logs:
        touched.setdefault(event.chain_booking_id, []).append(event)
    return touched


def _store_and_apply(
    consumer: EventConsumer, contract: IndexedContract, logs: list[DecodedLog], *, source: str, actor: str
) -> LogsOutcome:
    """Logs met outside a block range (a receipt, reconciliation): stored first, their bookings
    locked after (the lock order above: a receipt's log the scanner is inserting at the same
    moment is waited for before any booking is held)."""
    now = timezone.now()
    inserted = store.insert_events(contract.chain_id, contract.contract, logs, source=source, now=now)
    revive = _met_removed(contract, logs, inserted)
    return _apply_stored(
        consumer, contract, logs, inserted, _by_booking(logs), [], actor=actor, now=now, revive=revive
    )


def _met_removed(contract: IndexedContract, logs: list[DecodedLog], inserted: dict[str, list[int]]) -> list[DecodedLog]:
    """Logs this call did not insert whose stored row a reorg REMOVED, or stored from another
    block: moved back in by `_apply_stored`, once their bookings are locked."""
    if sum(len(ids) for ids in inserted.values()) == len(logs):
        return []
    return store.logs_to_revive(contract.chain_id, logs)


def _stale_rows(
    contract: IndexedContract, logs: list[DecodedLog], from_block: int, to_block: int, *, now,
    canonical: CanonicalHashes, answered_by: str, chain_booking_ids: list[str] | None = None,
) -> list[store.LiveRow]:
    """Rows stored for [from_block, to_block] (of these bookings only, if given) that the
    canonical `logs` of that range lack: their block left the chain. A row whose block is still
    on the chain (its hash is the canonical one) means the logs are an incomplete answer (a node
    that has not indexed the block yet): RpcInconsistentAnswer, naming `answered_by`."""
    stale = store.stale_events(
        contract.chain_id, contract.contract, from_block, to_block, logs, now=now, chain_booking_ids=chain_booking_ids
    )
    if stale:
        hashes = canonical.of(row.block_number for row in stale)
        for row in stale:
            if hashes[row.block_number] == row.block_hash:
                # Same block, same receipts: the log is still there and the answer left it out.
                raise RpcInconsistentAnswer(
                    f"the logs of blocks {from_block}-{to_block} lack a stored log of block {row.block_number}, "
                    "which is still on the chain (incomplete answer)", endpoint=answered_by,
                )
    return stale


def _apply_stored(
    consumer: EventConsumer, contract: IndexedContract, logs: list[DecodedLog], inserted: dict[str, list[int]],
    touched: dict[str, list[DecodedLog]], stale: list[store.LiveRow], *, actor: str, now, turn: ApplyTurn = NO_TURN,
    must_apply: frozenset[str] = frozenset(), revive: Sequence[DecodedLog] = (),
) -> LogsOutcome:
    """Move the `revive` logs' rows back in and mark the `stale` rows REMOVED (writes to stored
    rows: step 3 of the lock order, after the bookings), then apply the `touched` bookings (and theirs)."""
    removed: dict[str, list[int]] = {}
    if stale or revive:
        for row in stale:
            touched.setdefault(row.chain_booking_id, [])
        for event in revive:
            touched.setdefault(event.chain_booking_id, [])
        turn.wait()  # their bookings may be in the range before: lock nothing of theirs ahead of it
        # Every booking this call applies, locked at once in id order before their rows are
        # written; _apply below re-takes them.
        _lock(consumer, contract, touched)
        revived = store.revive_events(contract.chain_id, revive, now=now)
        for event in revive:
            if event.chain_booking_id in revived and event not in touched[event.chain_booking_id]:
                touched[event.chain_booking_id].append(event)
        for chain_booking_id, ids in revived.items():
            inserted.setdefault(chain_booking_id, []).extend(ids)
        removed = store.mark_removed([row.id for row in stale], now=now)
    outcome = LogsOutcome(logs=len(logs), inserted=sum(len(ids) for ids in inserted.values()))
    if stale:
        outcome.removed = sum(len(ids) for ids in removed.values())
    outcome.booking_ids = list(touched)
    if touched:
        outcome.add(_apply(
            consumer, contract, touched, inserted, actor=actor, now=now, turn=turn,
            # Re-derived only because rows of theirs were removed: no new row to mark FAILED,
            # so a failure rolls the range back (retried next pass) rather than being lost.
            must_apply=frozenset(cid for cid in removed if not inserted.get(cid)) | must_apply,
        ))
    return outcome


def _apply(
    consumer: EventConsumer, contract: IndexedContract, touched: dict[str, list[DecodedLog]],
    new_event_ids: dict[str, list[int]], *, actor: str, now, turn: ApplyTurn = NO_TURN,
    must_apply: frozenset[str] = frozenset(),
) -> ApplyOutcome:
    """Hand every booking in `touched` to the consumer with all its stored events.

    `touched` maps chain booking ids to the events this caller just stored (possibly none,
    e.g. after a reorg removed some); a booking's other stored events are read from the store
    after the consumer locked its rows, so concurrent writers (scanner, fast path) never fold an
    incomplete history. `new_event_ids` are the rows this caller inserted: those are what gets
    marked FAILED if the booking cannot be applied. `must_apply` are bookings whose failure has
    no row of this call to be recorded on (re-derived because their events left the chain): if
    one of them fails, the failure is raised (the caller's transaction decides), or it would be
    lost with the booking keeping a stale state. `turn` orders this call against a scanner
    range applied in parallel (see ApplyTurn). Must run inside a transaction.
    """
    ids = sorted(touched)
    outcome = ApplyOutcome()
    if not ids:
        return outcome
    started = time.perf_counter()
    # Locked outside the savepoints below: a failed bulk attempt rolls back its savepoint but
    # keeps these locks, so the one-by-one retry still holds every booking it started with.
    held = consumer.hold(contract.chain_id, contract.contract, ids)
    turn.locked()
    try:
        with transaction.atomic():
            _apply_bookings(consumer, contract, ids, held, touched, new_event_ids, actor, now, outcome, turn)
    except Superseded:
        raise
    except Exception as exc:
        if must_apply.issuperset(ids):
            raise  # nothing the one-by-one retry could record instead
        outcome.fallback = len(ids) > 1
        if outcome.fallback:
            log.warning("bulk apply of %d bookings failed (%s); applying one by one", len(ids), exc)
        outcome.bookings = outcome.orphans = 0
        for chain_booking_id in ids:
            try:
                with transaction.atomic():
                    _apply_bookings(
                        consumer, contract, [chain_booking_id], held, touched, new_event_ids, actor, now, outcome,
                        turn,
                    )
            except Superseded:
                raise
            except Exception as booking_exc:  # one bad booking must not block the others
                if chain_booking_id in must_apply:
                    raise
                _record_failure(chain_booking_id, new_event_ids.get(chain_booking_id, []), booking_exc, now, outcome)
    metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
    return outcome


def _record_failure(chain_booking_id, event_ids, exc, now, outcome: ApplyOutcome) -> None:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    log.error("applying chain events of booking %s failed: %s", chain_booking_id, error)
    outcome.failed_bookings.append(chain_booking_id)
    if event_ids:
        counts = store.mark_failed(event_ids, error, now=now)
        outcome.failed_events += counts["failed"] + counts["dead_letter"]
        outcome.dead_letters += counts["dead_letter"]


def _apply_bookings(
    consumer: EventConsumer, contract: IndexedContract, ids, held, touched, new_event_ids, actor, now,
    outcome: ApplyOutcome, turn: ApplyTurn,
) -> None:
    chain_id = contract.chain_id
    exclude = [i for cid in ids for i in new_event_ids.get(cid, [])]
    stored = store.load_events(chain_id, contract.contract, ids, exclude_ids=exclude)
    histories = {}
    unsettled_ids: list[int] = []
    for chain_booking_id in ids:
        events = {e.key: e for e in touched.get(chain_booking_id, [])}
        for row in stored.get(chain_booking_id, []):
            events.setdefault(row.event.key, row.event)
            if row.unsettled:
                unsettled_ids.append(row.id)
        histories[chain_booking_id] = events.values()
    orphans = consumer.apply(chain_id, contract.contract, histories, held, actor=actor, now=now, turn=turn)
    if unsettled_ids:
        store.mark_processed(unsettled_ids, now=now)
    outcome.bookings += len(ids) - len(orphans)
    outcome.orphans += len(orphans)
    counts: dict[tuple[str, str], int] = {}
    for chain_booking_id in ids:
        result = "orphan" if chain_booking_id in orphans else "processed"
        for event in touched.get(chain_booking_id, ()):
            counts[event.event_name, result] = counts.get((event.event_name, result), 0) + 1
    for (event_name, result), count in counts.items():  # one metric update per kind, not per event
        metrics.EVENTS_PROCESSED.labels(event_name, result).inc(count)
