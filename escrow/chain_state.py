"""What our contract's events mean for a booking: its chain state, a pure fold of its events.

A booking's chain state is a pure function of its events: `derive_chain_state` folds its
stored, non-removed events in (block_number, log_index) order through one handler per event
type (`apply_booking_paid`, `apply_service_completed`, `apply_booking_cancelled`). Making the
booking agree with that state is escrow.chain_effects' job.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from chain_events.decoding import BOOKING_CANCELLED, BOOKING_CREATED_AND_PAID, SERVICE_COMPLETED, DecodedLog


class ChainStatus:
    """A booking's status in the contract's storage, as our events tell it (and as the
    contract's `getBooking` names its Status enum). Plain strings, not an Enum: they are
    compared and hashed for every booking of a catch-up range."""

    NONE = "NONE"
    PAID = "PAID"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


#: chain_data["source"] of a booking whose chain_data the chain sync wrote.
CHAIN_DATA_SOURCE = "chain_events"


@dataclass(slots=True)
class ChainState:
    chain_booking_id: str
    status: str = ChainStatus.NONE
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
    if state.status != ChainStatus.NONE:
        # The contract refuses a second payment of the same id (BookingAlreadyExists).
        state.anomalies.append(f"second BookingCreatedAndPaid in tx {event.tx_hash} ignored")
        return
    state.status = ChainStatus.PAID
    state.payment = event


def _money_leaves(state: ChainState, event: DecodedLog, status: str) -> bool:
    """Completion or cancellation: the escrowed money leaves, only ever once per booking.
    False when the event is ignored (the booking already finished)."""
    if state.status in (ChainStatus.COMPLETED, ChainStatus.CANCELLED):
        state.anomalies.append(f"{event.event_name} in tx {event.tx_hash} after {state.status} ignored")
        return False
    if state.status == ChainStatus.NONE:
        state.anomalies.append(f"{event.event_name} in tx {event.tx_hash} without a known payment")
    state.status = status
    return True


def apply_service_completed(state: ChainState, event: DecodedLog) -> None:
    if _money_leaves(state, event, ChainStatus.COMPLETED):
        state.completion = event


def apply_booking_cancelled(state: ChainState, event: DecodedLog) -> None:
    if _money_leaves(state, event, ChainStatus.CANCELLED):
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
