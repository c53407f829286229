"""The receipt fast path: apply one transaction's escrow events now, without waiting for the scanner.

A client that just sent a transaction reports its hash (`POST .../submit-transaction/`).
We fetch the receipt at once, decode the logs that came from OUR escrow contract (any other
address is ignored, whatever its topics), and store and apply them through exactly the path
the scanner uses (chain_events.ingest.apply_receipt_logs: `store.insert_events` keyed on
(chain id, tx hash, log index), then the same hand-over to escrow.chain_consumer), in one
database transaction. Because the key and the fold are the same, the scanner meeting the
same logs later finds them stored and changes nothing; and if the scanner got there first,
the insert stores nothing new and re-deriving the booking from its events changes nothing either.

Before anything is stored, the receipt's block must be the chain's block at its height: the
hash the scanner holds for it while the block is in its unfinalized window, the node's
`eth_getBlockByNumber` otherwise (older blocks, and blocks the scanner has not reached). A
receipt from any other block (a node still on a fork the chain left, or a transaction that was
reorganised out) is refused with ReceiptNotCanonical and nothing is stored. The scanner still
owns the chain's canonical view after that: events stored here ahead of its cursor are checked
(and marked REMOVED if their block left the chain) when it scans their blocks.

Not mined: the node either holds the transaction in its mempool (`in_mempool`: the client
waits) or has never seen it (the client waits a little, then sends it again). Reverted: the
receipt carries no reason, so the transaction is replayed at its block and the contract's
custom error decoded (escrow.revert_reasons).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings

from chain_events.cursor import held_block_hash, indexed_contract
from chain_events.decoding import BOOKING_EVENT_TOPICS, DecodedLog, decode_logs
from chain_events.ingest import apply_receipt_logs
from chain_events.rpc import (
    HEAD_HEADER_CALL,
    RpcClient,
    RpcInconsistentAnswer,
    RpcResponseError,
    get_receipt,
    get_rpc_client,
)

from .errors import BookingConflict
from .revert_reasons import RevertReason, replay_revert_reason

log = logging.getLogger(__name__)


@dataclass
class ReceiptOutcome:
    """What the fast path found in a receipt and did with it."""

    tx_hash: str
    mined: bool
    # Not mined, but the node holds it (eth_getTransactionByHash answers it): pending, not unknown.
    in_mempool: bool = False
    block_number: int | None = None
    reverted: bool = False
    # Why it reverted (the contract's custom error), for reverted calls to our escrow contract.
    revert_reason: RevertReason | None = None
    # The transaction was sent to our escrow contract (its `to`), even if it emitted nothing.
    called_escrow: bool = False
    # Our contract's booking events in this receipt, in log order.
    events: list[DecodedLog] = field(default_factory=list)
    # Rows this call inserted (the others were already stored, e.g. by the scanner).
    inserted: int = 0
    # Mined, but fewer than CHAIN_CONFIRMATIONS blocks deep: left to the scanner.
    awaiting_confirmations: bool = False
    # Bookings re-derived from their stored events and brought in line with them.
    bookings_applied: int = 0

    @property
    def touched_escrow(self) -> bool:
        return self.called_escrow or bool(self.events)


class ReceiptNotCanonical(BookingConflict):
    """The receipt is from a block that is not the chain's block at its height (HTTP 409): nothing was stored."""

    def __init__(self, tx_hash: str, number: int, receipt_block: str, canonical_block: str):
        self.block_number = number
        super().__init__(
            f"transaction {tx_hash} was reported in block {number} {receipt_block}, but the chain's block {number} "
            f"is {canonical_block}: the transaction was reorganised out, or the node that answered is on a fork "
            "the chain left. Nothing was applied; report it again once it is mined on the chain."
        )


def process_transaction(tx_hash: str, *, actor: str = "", client: RpcClient | None = None) -> ReceiptOutcome:
    """Fetch `tx_hash`'s receipt and store + apply our contract's events from it.

    Idempotent and safe next to the scanner. RPC failures propagate as
    chain_events.rpc.RpcError. `tx_hash` must already be normalised (0x + 64 lower hex).
    """
    client = client or get_rpc_client()
    receipt = get_receipt(client, tx_hash)
    if receipt is None:
        return ReceiptOutcome(tx_hash=tx_hash, mined=False, in_mempool=get_transaction(client, tx_hash) is not None)
    contract = indexed_contract().contract
    outcome = ReceiptOutcome(
        tx_hash=tx_hash,
        mined=True,
        block_number=int(receipt["blockNumber"], 16),
        called_escrow=(receipt.get("to") or "").lower() == contract,
    )
    outcome.reverted = int(receipt.get("status") or "0x0", 16) == 0
    if not outcome.reverted:  # a reverted transaction emits no logs: nothing to store
        outcome.events = decode_logs(receipt.get("logs") or [], contract_address=contract)
    if not outcome.touched_escrow:
        return outcome
    # Whatever we answer about a receipt of ours (even "reverted") must be about the chain's block.
    block_hash = receipt["blockHash"].lower()
    block = read_receipt_block(client, tx_hash, outcome.block_number, block_hash, contract=contract,
                               booking_ids=sorted({event.chain_booking_id for event in outcome.events}))
    if outcome.reverted and outcome.called_escrow:
        transaction = get_transaction(client, tx_hash)
        outcome.revert_reason = (
            replay_revert_reason(client, transaction, outcome.block_number)
            if transaction is not None else RevertReason(error=None)
        )
    if not outcome.events:
        return outcome
    if block.head is not None and block.head - outcome.block_number < settings.CHAIN_CONFIRMATIONS:
        # The scanner only applies blocks this deep; applying earlier would let the fast
        # path and the scanner disagree about what counts as settled.
        outcome.awaiting_confirmations = True
        return outcome
    outcome.events = with_same_block_events(outcome.events, block.booking_events)
    store_and_apply(outcome, actor=actor)
    return outcome


def with_same_block_events(events: list[DecodedLog], same_block: list[DecodedLog]) -> list[DecodedLog]:
    """The receipt's events plus the other events of its bookings in the same block (e.g. the
    payment mined just before the cancellation reported here), in chain order: folding the
    receipt's alone would take the booking through "cancellation without a known payment"."""
    merged = {(e.tx_hash, e.log_index): e for e in same_block}
    merged.update({(e.tx_hash, e.log_index): e for e in events})
    return sorted(merged.values(), key=lambda e: e.position)


@dataclass
class ReceiptBlock:
    head: int | None  # the chain's head, when CHAIN_CONFIRMATIONS needs it
    booking_events: list[DecodedLog]  # the events of the bookings asked about in the receipt's block


def read_receipt_block(
    client: RpcClient, tx_hash: str, number: int, receipt_block: str, *, contract: str, booking_ids: list[str],
) -> ReceiptBlock:
    """Refuse (ReceiptNotCanonical) a receipt whose block is not the chain's block `number`; else
    the head and the events of `booking_ids` in that block. One round trip at most.

    The chain's block: the hash the scanner holds while `number` is in its unfinalized window
    (not asked), the node's header otherwise. The bookings' logs are asked by block hash in the
    same batch, before we know the block is the chain's: a node that no longer has it may answer
    that with an error, which matters only when the block is the chain's (then it is the node's
    failure and the next endpoint is asked, as for a node behind the block).
    """
    held = held_block_hash(number)
    calls = [] if held is not None else [("eth_getBlockByNumber", [hex(number), False])]
    if settings.CHAIN_CONFIRMATIONS:
        calls.append(HEAD_HEADER_CALL)
    optional = frozenset()
    if booking_ids:
        calls.append(("eth_getLogs", [{"address": contract, "blockHash": receipt_block,
                                       "topics": [BOOKING_EVENT_TOPICS, booking_ids]}]))
        optional = frozenset({len(calls) - 1})  # "unknown block" for a block the chain left: not a failure
    read: dict = {}
    client.batch(calls, allow_errors=True, optional=optional,
                 validate=lambda results: read.update(_block_answers(results, held, number, receipt_block)))
    canonical = _answer(read["canonical"])
    head = _answer(read["head"])
    if canonical != receipt_block:
        log.warning("fast path: tx %s is in block %s %s, the chain's block there is %s: refused",
                    tx_hash, number, receipt_block, canonical)
        raise ReceiptNotCanonical(tx_hash, number, receipt_block, canonical)
    events = []
    if booking_ids:
        events = [e for e in decode_logs(_answer(read["logs"]), contract_address=contract)
                  if e.chain_booking_id in booking_ids and e.block_hash == receipt_block]
    return ReceiptBlock(head=head, booking_events=events)


def _block_answers(results: list, held: str | None, number: int, receipt_block: str) -> dict:
    """The batch's answers, read once: the chain's hash at `number` (`held`, or the node's header),
    the head (None when CHAIN_CONFIRMATIONS is 0) and the logs (None when not asked); a JSON-RPC
    error stays in its place. They must come from a node that has block `number`, else the next
    is asked (RpcInconsistentAnswer): its header there, a head at or above it and, when the block
    is the receipt's, the block's logs (an error then is the node's failure; for a block the
    chain left, an answer)."""
    answers = iter(results)
    read = {"canonical": held, "head": None, "logs": None}
    if held is None:
        header = next(answers)
        if header is None:  # a node behind the one that answered the receipt
            raise RpcInconsistentAnswer(f"node has no block {number}")
        read["canonical"] = header if isinstance(header, RpcResponseError) else header["hash"].lower()
    if settings.CHAIN_CONFIRMATIONS:
        head = next(answers)
        read["head"] = head if isinstance(head, RpcResponseError) else int(head["number"], 16)
        if isinstance(read["head"], int) and read["head"] < number:
            raise RpcInconsistentAnswer(f"node is behind: its head is below block {number}")
    read["logs"] = next(answers, None)
    if isinstance(read["logs"], RpcResponseError) and read["canonical"] == receipt_block:
        raise RpcInconsistentAnswer(f"the logs of block {number}: {read['logs']}")
    return read


def _answer(result):
    if isinstance(result, RpcResponseError):
        raise result
    return result


def get_transaction(client: RpcClient, tx_hash: str) -> dict | None:
    """eth_getTransactionByHash: the transaction as the node knows it (in its mempool, or mined),
    or None when the node has never seen it."""
    return client.call("eth_getTransactionByHash", [tx_hash])


def store_and_apply(outcome: ReceiptOutcome, *, actor: str = "") -> None:
    """Store the receipt's decoded escrow events and apply the bookings they touch, in one
    transaction, through the scanner's own ingest (same insert, same fold and apply). The ingest
    inserts the log rows before it locks any booking (chain_events.ingest, THE LOCK ORDER): the
    scanner may be storing the same logs at this moment, and waits for nothing we hold."""
    result = apply_receipt_logs(outcome.events, actor=f"receipt:{actor}" if actor else "receipt")
    outcome.inserted = result.inserted
    outcome.bookings_applied = result.bookings
    log.info(
        "fast path: tx %s block %s: %d event(s), %d new, %d booking(s) re-derived",
        outcome.tx_hash, outcome.block_number, len(outcome.events), result.inserted, result.bookings,
    )
