"""Escrow as the consumer of the chain indexer's events (chain_events.consumers).

For each booking id the indexer hands over with all its stored events, the booking is made to
agree with the chain state they fold into (escrow.chain_state, escrow.chain_effects); a
booking id the database does not know becomes an Orphan, kept in line with the chain for
reconciliation to refund. `EscrowConfig.ready()` registers the consumer the indexer uses
(status changes recorded as source `chain`); reconciliation hands logs it fetched to one
recording them as its own (`BookingConsumer(status_source=...)`).
"""
from __future__ import annotations

import logging

from chain_events import metrics, store
from chain_events.consumers import EventConsumer
from chain_events.models import Orphan, OrphanStatus
from common.eth import checksum

from . import chain_effects
from .chain_state import ChainState, ChainStatus, derive_chain_state
from .models import StatusSource

log = logging.getLogger(__name__)


class BookingConsumer(EventConsumer):
    """Bookings (and orphans) in line with their chain events. `status_source` is what the
    BookingStatusChange rows say moved a booking (`chain`, `reconciliation`, `admin`)."""

    def __init__(self, status_source: str = StatusSource.CHAIN):
        self.status_source = status_source

    def lock(self, chain_id: int, contract: str, keys: list[str]) -> None:
        """The bookings (in id order), then the orphans of the ids the database does not know."""
        chain_effects.lock_bookings(keys)
        list(Orphan.objects.select_for_update().filter(
            chain_id=chain_id, contract_address=contract, chain_booking_id__in=keys
        ).order_by("id").values_list("id", flat=True))

    def hold(self, chain_id: int, contract: str, keys: list[str]) -> dict[str, chain_effects.BookingSnapshot]:
        return chain_effects.lock_bookings(keys)

    def apply(self, chain_id, contract, histories, held, *, actor, now, turn) -> dict[str, ChainState]:
        states = {cid: derive_chain_state(cid, events) for cid, events in histories.items()}
        known = [(held[cid], state) for cid, state in states.items() if cid in held]
        unknown = {cid: state for cid, state in states.items() if cid not in held}
        if known:
            chain_effects.sync_bookings_to_chain(
                known, actor=actor, now=now, source=self.status_source, before_shared_writes=turn.wait
            )
        if unknown:
            turn.wait()  # another range may record the same orphan
            record_orphans(chain_id, contract, unknown, now=now)
        return unknown


def record_orphans(chain_id: int, contract: str, states: dict[str, ChainState], *, now) -> None:
    """Chain booking ids the database does not know: one Orphan each, kept in line with the chain."""
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
            log.warning(
                "orphan booking id %s on chain (%s in tx %s)", chain_booking_id, evidence.event_name, evidence.tx_hash
            )
        changed = []
        if orphan.chain_status != state.status:
            orphan.chain_status = state.status
            changed.append("chain_status")
        # Reconciliation refunds what is still escrowed (chain status PAID). Once the money
        # left (completed/cancelled) or the payment left the chain (reorg), there is nothing
        # to refund: resolved by the chain; reopened if a reorg brings the payment back alone.
        escrowed = state.status == ChainStatus.PAID
        if not escrowed and orphan.status == OrphanStatus.OPEN:
            why = f"tx {state.last_event.tx_hash}" if state.last_event else "its events left the chain (reorg)"
            changed += orphan.move_to(OrphanStatus.RESOLVED, f"chain shows {state.status} ({why})", by="chain", at=now)
        elif escrowed and orphan.status == OrphanStatus.RESOLVED and orphan.resolved_by == "chain":
            changed += orphan.move_to(OrphanStatus.OPEN, "reopened: the chain shows the payment escrowed again (reorg)")
        if changed:
            orphan.save(update_fields=[*changed, "updated_at"])
