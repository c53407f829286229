"""What our contract's events mean for a booking, and applying them exactly once.

A booking's chain state is a pure function of its events: `derive_chain_state` folds its
stored, non-removed events in (block_number, log_index) order through one handler per event
type (`apply_booking_paid`, `apply_service_completed`, `apply_booking_cancelled`). Applying
means making the booking agree with that state (`escrow.chain_effects`): the previous
derived state is kept on the booking (chain_data), so applying the same state again
changes nothing, and a state that lost an event (reorg) undoes exactly that event's effects.

`apply_events` is the one entry point used by the scanner, the receipt fast path, retries,
replays and reorg rollback. It runs inside the caller's transaction and:
1. tries all touched bookings at once in a savepoint (the fast bulk path);
2. if that fails, retries each booking in its own savepoint, so one bad event never blocks
   the others: the events of a booking that still fails are marked FAILED with backoff
   (DEAD_LETTER after CHAIN_EVENT_MAX_ATTEMPTS), the rest are applied.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from escrow import chain_effects
from escrow.models import StatusSource

from . import metrics, store
from common.eth import checksum

from .decoding import BOOKING_CANCELLED, BOOKING_CREATED_AND_PAID, SERVICE_COMPLETED, DecodedLog
from .models import OrphanStatus

log = logging.getLogger(__name__)

# Derived chain status of a booking (what the contract's storage says, as our events tell it).
NONE, PAID, COMPLETED, CANCELLED = "NONE", "PAID", "COMPLETED", "CANCELLED"
CHAIN_DATA_SOURCE = "chain_events"


@dataclass(slots=True)
class ChainState:
    chain_booking_id: str
    status: str = NONE
    payment: DecodedLog | None = None
    completion: DecodedLog | None = None
    cancellation: DecodedLog | None = None
    last_event: DecodedLog | None = None
    # Sequences the contract cannot produce (e.g. a completion without a payment we know of):
    # the chain still wins, but staff are told.
    anomalies: list[str] = field(default_factory=list)
    events: int = 0

    def to_json(self) -> dict:
        """What the booking keeps in chain_data: the derived state, uint256 as strings."""
        out = {"source": CHAIN_DATA_SOURCE, "status": self.status}
        if self.last_event is not None:
            out["event"] = self.last_event.event_name
        for name in ("payment", "completion", "cancellation"):
            event = getattr(self, name)
            if event is not None:
                out[name] = event_facts(event)
        if self.anomalies:
            out["anomalies"] = list(self.anomalies)
        return out


def event_facts(event: DecodedLog) -> dict:
    facts = {
        "tx_hash": event.tx_hash,
        "block_number": event.block_number,
        "block_hash": event.block_hash,
        "log_index": event.log_index,
    }
    for key, value in event.args.items():
        facts[key] = str(value) if type(value) is int else value
    return facts


# -- the fold: one handler per event type -------------------------------------------------
def apply_booking_paid(state: ChainState, event: DecodedLog) -> None:
    if state.status != NONE:
        # The contract refuses a second payment of the same id (BookingAlreadyExists).
        state.anomalies.append(f"second BookingCreatedAndPaid in tx {event.tx_hash} ignored")
        return
    state.status = PAID
    state.payment = event


def _money_leaves(state: ChainState, event: DecodedLog, status: str) -> bool:
    """Completion or cancellation: the escrowed money leaves, only ever once per booking.
    False when the event is ignored (the booking already finished)."""
    if state.status in (COMPLETED, CANCELLED):
        state.anomalies.append(f"{event.event_name} in tx {event.tx_hash} after {state.status} ignored")
        return False
    if state.status == NONE:
        state.anomalies.append(f"{event.event_name} in tx {event.tx_hash} without a known payment")
    state.status = status
    return True


def apply_service_completed(state: ChainState, event: DecodedLog) -> None:
    if _money_leaves(state, event, COMPLETED):
        state.completion = event


def apply_booking_cancelled(state: ChainState, event: DecodedLog) -> None:
    if _money_leaves(state, event, CANCELLED):
        state.cancellation = event


HANDLERS = {
    BOOKING_CREATED_AND_PAID: apply_booking_paid,
    SERVICE_COMPLETED: apply_service_completed,
    BOOKING_CANCELLED: apply_booking_cancelled,
}


def derive_chain_state(chain_booking_id: str, events) -> ChainState:
    """Fold a booking's (non-removed) events in chain order. Pure: same events, same state."""
    state = ChainState(chain_booking_id)
    for event in sorted(events, key=lambda e: e.position):
        HANDLERS[event.event_name](state, event)
        state.last_event = event
        state.events += 1
    return state


# -- applying -------------------------------------------------------------------------------
class Superseded(Exception):
    """The range applied before this one (in another transaction) did not commit: this one
    must roll back too, or its cursor move would skip the failed range."""


class ApplyTurn:
    """Where a scanner range stands against the range before it, when ranges are applied
    in parallel transactions (chain_events.scanner): `locked()` says this range holds its
    bookings' row locks (the next range may start: it will wait on those locks, never the
    other way round), `wait()` blocks until the range before committed (Superseded if it did
    not). Rows that two ranges may both write (provider earnings, orphans, the cursor) are
    written only after `wait()`. This base class is the turn of a lone range: no waiting."""

    def locked(self) -> None:
        pass

    def wait(self) -> None:
        pass


NO_TURN = ApplyTurn()


def lock_chain_bookings(chain_id: int, contract: str, chain_booking_ids) -> None:
    """Lock these bookings (in id order), then the orphans of the ids the database does not
    know, before writing any of their event rows.

    The lock order writers keep: the scanner and the fast path lock a booking in
    `apply_events` and then write its unsettled event rows. A writer that updates event rows
    first (a retry claiming them, a rollback marking them REMOVED, a stored log reviving a
    removed row) and locks their bookings after would wait on such a writer while it waits
    on those rows: PostgreSQL aborts one. (The scanner's ranges insert their new rows before
    locking; see scanner._ingest and store.insert_events.)
    """
    from .models import Orphan

    ids = sorted(set(chain_booking_ids))
    if not ids:
        return
    chain_effects.lock_bookings(ids)
    list(Orphan.objects.select_for_update().filter(
        chain_id=chain_id, contract_address=contract, chain_booking_id__in=ids
    ).order_by("id").values_list("id", flat=True))


@dataclass
class ApplyOutcome:
    bookings: int = 0
    orphans: int = 0
    failed_bookings: list[str] = field(default_factory=list)
    failed_events: int = 0
    dead_letters: int = 0
    fallback: bool = False


def apply_events(
    *,
    chain_id: int,
    contract: str,
    touched: dict[str, list[DecodedLog]],
    new_event_ids: dict[str, list[int]] | None = None,
    actor: str,
    now=None,
    status_source: str = StatusSource.CHAIN,
    turn: ApplyTurn = NO_TURN,
    must_apply: frozenset[str] = frozenset(),
) -> ApplyOutcome:
    """Bring every booking in `touched` in line with all its stored events.

    `touched` maps chain booking ids to the events this caller just stored (possibly none,
    e.g. after a reorg removed some); the booking's other stored events are read from the
    store after its row is locked, so concurrent writers (scanner, fast path) never fold an
    incomplete history. `new_event_ids` are the rows this caller inserted: those are what
    gets marked FAILED if the booking cannot be applied. `must_apply` are bookings whose
    failure has no row of this call to be recorded on (re-derived because their events left
    the chain: a reorg rollback, stale fast-path rows): if one of them fails, the failure is
    raised (the caller's transaction decides), or it would be lost with the booking keeping a
    stale money state. `status_source` is the BookingStatusChange source (`chain`, or
    `reconciliation` when it applies logs). `turn` orders this call against a scanner range
    applied in parallel (see ApplyTurn). Must run inside a transaction.
    """
    now = now or timezone.now()
    new_event_ids = new_event_ids or {}
    ids = sorted(touched)
    outcome = ApplyOutcome()
    if not ids:
        return outcome
    started = time.perf_counter()
    # Locked outside the savepoints below: a failed bulk attempt rolls back its savepoint but
    # keeps these locks, so the one-by-one retry still holds every booking it started with.
    snapshots = chain_effects.lock_bookings(ids)
    turn.locked()
    try:
        with transaction.atomic():
            _apply_bookings(
                chain_id, contract, ids, snapshots, touched, new_event_ids, actor, now, outcome, status_source, turn
            )
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
                        chain_id, contract, [chain_booking_id], snapshots, touched, new_event_ids, actor, now,
                        outcome, status_source, turn,
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
    chain_id, contract, ids, snapshots, touched, new_event_ids, actor, now, outcome: ApplyOutcome, status_source,
    turn: ApplyTurn,
) -> None:
    exclude = [i for cid in ids for i in new_event_ids.get(cid, [])]
    stored = store.load_events(chain_id, contract, ids, exclude_ids=exclude)
    states: dict[str, ChainState] = {}
    unsettled_ids: list[int] = []
    for chain_booking_id in ids:
        events = {e.key: e for e in touched.get(chain_booking_id, [])}
        for row in stored.get(chain_booking_id, []):
            events.setdefault(row.event.key, row.event)
            if row.unsettled:
                unsettled_ids.append(row.id)
        states[chain_booking_id] = derive_chain_state(chain_booking_id, events.values())
    known = {cid: states[cid] for cid in ids if cid in snapshots}
    unknown = {cid: states[cid] for cid in ids if cid not in snapshots}
    if known:
        chain_effects.sync_bookings_to_chain(
            [(snapshots[cid], state) for cid, state in known.items()], actor=actor, now=now, source=status_source,
            before_shared_writes=turn.wait,
        )
    if unknown:
        turn.wait()  # another range may record the same orphan
        record_orphans(chain_id, contract, unknown, new_event_ids, now=now)
    if unsettled_ids:
        store.mark_processed(unsettled_ids, now=now)
    outcome.bookings += len(known)
    outcome.orphans += len(unknown)
    counts: dict[tuple[str, str], int] = {}
    for chain_booking_id in ids:
        result = "processed" if chain_booking_id in known else "orphan"
        for event in touched.get(chain_booking_id, ()):
            counts[event.event_name, result] = counts.get((event.event_name, result), 0) + 1
    for (event_name, result), count in counts.items():  # one metric update per kind, not per event
        metrics.EVENTS_PROCESSED.labels(event_name, result).inc(count)


# -- orphans --------------------------------------------------------------------------------
def record_orphans(chain_id: int, contract: str, states: dict[str, ChainState], new_event_ids, *, now) -> None:
    """Chain booking ids the database does not know: one Orphan each, kept in line with the chain."""
    from .models import Orphan

    existing = {
        o.chain_booking_id: o
        for o in Orphan.objects.select_for_update().filter(
            chain_id=chain_id, contract_address=contract, chain_booking_id__in=list(states)
        )
    }
    for chain_booking_id, state in states.items():
        evidence = state.payment or state.completion or state.cancellation
        orphan = existing.get(chain_booking_id)
        if orphan is None:
            if evidence is None:
                continue  # every event removed before we ever recorded it
            args = state.payment.args if state.payment else {}
            event_id = store.event_id(chain_id, evidence.tx_hash, evidence.log_index)
            orphan = Orphan.objects.create(
                chain_id=chain_id,
                contract_address=contract,
                chain_booking_id=chain_booking_id,
                event_id=event_id,
                event_name=evidence.event_name,
                customer_address=checksum(args["customer"]) if args else "",
                provider_address=checksum(args["provider"]) if args else "",
                amount=args.get("amount"),
                block_number=evidence.block_number,
                tx_hash=evidence.tx_hash,
                chain_status=state.status,
            )
            metrics.ORPHANS.inc()
            log.warning("orphan booking id %s on chain (%s in tx %s)", chain_booking_id, evidence.event_name, evidence.tx_hash)
        changed = []
        if orphan.chain_status != state.status:
            orphan.chain_status = state.status
            changed.append("chain_status")
        # Reconciliation refunds what is still escrowed (chain status PAID). Once the money
        # left (completed/cancelled) or the payment left the chain (reorg), there is nothing
        # to refund: resolved by the chain; reopened if a reorg brings the payment back alone.
        escrowed = state.status == PAID
        if not escrowed and orphan.status == OrphanStatus.OPEN:
            why = f"tx {state.last_event.tx_hash}" if state.last_event else "its events left the chain (reorg)"
            changed += orphan.move_to(OrphanStatus.RESOLVED, f"chain shows {state.status} ({why})", by="chain", at=now)
        elif escrowed and orphan.status == OrphanStatus.RESOLVED and orphan.resolved_by == "chain":
            changed += orphan.move_to(OrphanStatus.OPEN, "reopened: the chain shows the payment escrowed again (reorg)")
        if changed:
            orphan.save(update_fields=[*changed, "updated_at"])
