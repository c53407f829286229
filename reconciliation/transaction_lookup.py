"""What the backend knows of a transaction (`GET /api/transactions/{hash}/`): the database first,
the chain node only for what the database cannot say.

The database knows a transaction when the indexer stored escrow events of it (chain_events:
mined at block N, applied to which bookings), when a booking names it (its payment, completion or
cancellation, or a revert put on its history by submit-transaction), or when the operator
account sent it (reconciliation.SentTransaction). Stored events answer "mined" without a round
trip, their confirmations counted against the head the scanner last saw. Everything else is
asked of the node: the receipt (mined, or reverted: the contract's error decoded by replaying
the call, escrow.revert_reasons), else the transaction (in the mempool: pending), else nothing
(unknown). Nothing is stored or applied here: reporting it is `submit-transaction`'s job.

Who may read it (`visible_to`): staff, anything; a wallet, a transaction it sent or one that
touches a booking where it is customer, provider or inviter, and any hash nobody knows (there is
nothing to tell). The database is read first, so a transaction of someone else's booking is
refused without a node round trip.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Q

from chain_events.cursor import indexed_contract
from chain_events.decoding import decode_logs
from chain_events.models import ChainEvent, EventStatus, SyncCursor
from chain_events.rpc import RpcClient, get_head_number, get_receipt, get_rpc_client
from common.eth import same_address
from escrow.authentication import is_staff_user, is_wallet
from escrow.fastpath import get_transaction
from escrow.models import Booking, BookingStatusChange
from escrow.revert_reasons import RevertReason, called_function, replay_revert_reason
from escrow.services import polling_advice

from .models import SentTransaction

TRANSACTION_STATUSES = ("unknown", "pending", "mined", "reverted")


@dataclass
class TouchedBooking:
    booking: Booking
    events: list[str] = field(default_factory=list)  # its escrow events in this transaction, in log order


@dataclass
class TransactionReport:
    tx_hash: str
    status: str  # one of TRANSACTION_STATUSES
    block_number: int | None = None
    head_block: int | None = None
    sender: str = ""  # the `from` address, when the node was asked
    # Its escrow events are stored and applied (by the scanner or submit-transaction).
    applied: bool = False
    bookings: list[TouchedBooking] = field(default_factory=list)
    reason: RevertReason | None = None
    operator_transaction: SentTransaction | None = None
    # "database": answered without a node round trip; "node": the node was asked too.
    answered_from: str = "database"
    retry_after_seconds: int | None = None
    hint: str = ""

    @property
    def confirmations(self) -> int | None:
        """Blocks on top of and including its block (1 = in the head block), as of `head_block`."""
        if self.block_number is None or self.head_block is None:
            return None
        return max(0, self.head_block - self.block_number + 1)


def lookup_transaction(tx_hash: str, *, client: RpcClient | None = None) -> TransactionReport:
    """Everything known of `tx_hash` (normalised: 0x + 64 lower hex); the node only when needed.
    RPC failures propagate (chain_events.rpc.RpcError: the API answers 503)."""
    report = _from_database(tx_hash)
    if report is None:
        return _from_node(tx_hash, client or get_rpc_client())
    if report.head_block is None:  # the scanner has not seen its block yet (the fast path stored it)
        report.head_block = get_head_number(client or get_rpc_client())
        report.answered_from = "node"
    return report


def visible_to(user, report: TransactionReport) -> bool:
    if is_staff_user(user):
        return True
    if not is_wallet(user):
        return False
    if report.status == "unknown" or same_address(report.sender, user.address):
        return True
    return any(_party(user.address, touched.booking) for touched in report.bookings)


def without_others_bookings(user, report: TransactionReport) -> TransactionReport:
    """`report` showing only the bookings `user` may see (staff: all)."""
    if not is_staff_user(user):
        report.bookings = [t for t in report.bookings if _party(user.address, t.booking)]
    return report


def _party(address: str, booking: Booking) -> bool:
    return any(
        same_address(address, party)
        for party in (booking.customer_address, booking.provider_address, booking.inviter_address)
        if party
    )


# -- the database's knowledge -------------------------------------------------------------------
def _from_database(tx_hash: str) -> TransactionReport | None:
    """A report from stored events alone (a mined transaction the indexer applied), or None."""
    contract = indexed_contract()
    events = list(
        ChainEvent.objects.filter(chain_id=contract.chain_id, tx_hash=tx_hash)
        .exclude(status=EventStatus.REMOVED).order_by("log_index")
        .values_list("chain_booking_id", "event_name", "block_number", "status")
    )
    if not events:
        return None  # never stored, or its block left the chain: the node says where it stands
    operator = _operator_transaction(tx_hash)
    by_id = {b.chain_booking_id: b for b in Booking.objects.filter(chain_booking_id__in={e[0] for e in events})}
    touched: dict[str, TouchedBooking] = {}
    for chain_booking_id, event_name, _, _ in events:
        if chain_booking_id in by_id:
            touched.setdefault(chain_booking_id, TouchedBooking(by_id[chain_booking_id])).events.append(event_name)
    block_number = events[0][2]
    head = (
        SyncCursor.objects.filter(chain_id=contract.chain_id, contract_address=contract.contract)
        .values_list("head_block", flat=True).first()
    )
    return TransactionReport(
        tx_hash=tx_hash,
        status="mined",
        block_number=block_number,
        head_block=head if head is not None and head >= block_number else None,
        applied=all(status == EventStatus.PROCESSED for *_, status in events),
        bookings=list(touched.values()),
        operator_transaction=operator,
    )


def _bookings_naming(tx_hash: str):
    reverted = BookingStatusChange.objects.filter(tx_hash=tx_hash).values("booking_id")
    sent = SentTransaction.objects.filter(Q(tx_hash=tx_hash) | Q(tx_hashes__contains=[tx_hash])).values("booking_id")
    return Booking.objects.filter(
        Q(payment_tx_hash=tx_hash) | Q(completion_tx_hash=tx_hash) | Q(cancellation_tx_hash=tx_hash)
        | Q(pk__in=reverted) | Q(pk__in=sent)
    ).order_by("id")


def _operator_transaction(tx_hash: str) -> SentTransaction | None:
    return (
        SentTransaction.objects.filter(Q(tx_hash=tx_hash) | Q(tx_hashes__contains=[tx_hash]))
        .order_by("-id").first()
    )


# -- the node's ------------------------------------------------------------------------------------
def _from_node(tx_hash: str, client: RpcClient) -> TransactionReport:
    known = [TouchedBooking(b) for b in _bookings_naming(tx_hash)]
    operator = _operator_transaction(tx_hash)
    receipt = get_receipt(client, tx_hash)
    transaction = get_transaction(client, tx_hash)
    report = TransactionReport(
        tx_hash=tx_hash, status="unknown", bookings=known, operator_transaction=operator, answered_from="node",
        sender=(transaction or receipt or {}).get("from") or "",
    )
    if receipt is None:
        report.status = "pending" if transaction is not None else "unknown"
        report.retry_after_seconds, report.hint = polling_advice(report.status)
        if transaction is not None:
            _add_called_booking(report, transaction)
        return report
    report.block_number = int(receipt["blockNumber"], 16)
    report.head_block = get_head_number(client)
    contract = indexed_contract().contract
    if int(receipt.get("status") or "0x0", 16) == 0:
        report.status = "reverted"
        if (receipt.get("to") or "").lower() == contract and transaction is not None:
            report.reason = replay_revert_reason(client, transaction, report.block_number)
            _add_called_booking(report, transaction)
        return report
    report.status = "mined"
    events = decode_logs(receipt.get("logs") or [], contract_address=contract)
    ids = {event.chain_booking_id for event in events}
    by_id = {b.chain_booking_id: b for b in Booking.objects.filter(chain_booking_id__in=ids)}
    touched = {t.booking.chain_booking_id: t for t in report.bookings}
    for event in events:
        if event.chain_booking_id in by_id:
            touched.setdefault(event.chain_booking_id, TouchedBooking(by_id[event.chain_booking_id]))
            touched[event.chain_booking_id].events.append(event.event_name)
    report.bookings = list(touched.values())
    if events and report.confirmations is not None and report.confirmations <= settings.CHAIN_CONFIRMATIONS:
        report.retry_after_seconds, report.hint = polling_advice("pending")
    return report


def _add_called_booking(report: TransactionReport, transaction: dict) -> None:
    """The booking an escrow call names (a pending or reverted one emitted no event to say it)."""
    if (transaction.get("to") or "").lower() != indexed_contract().contract:
        return
    _, chain_booking_id = called_function(transaction.get("input") or "0x")
    if chain_booking_id is None or any(t.booking.chain_booking_id == chain_booking_id for t in report.bookings):
        return
    booking = Booking.objects.filter(chain_booking_id=chain_booking_id).first()
    if booking is not None:
        report.bookings.append(TouchedBooking(booking))
