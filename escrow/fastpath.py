"""The receipt fast path: apply one transaction's escrow events now, without waiting for the scanner.

A client that just sent a transaction reports its hash (`POST .../submit-transaction/`).
We fetch the receipt at once, decode the logs that came from OUR escrow contract (any other
address is ignored, whatever its topics), and store and apply them through exactly the path
the scanner uses (chain_events.ingest.apply_receipt_logs: `store.insert_events` keyed on
(chain id, tx hash, log index), then the same hand-over to escrow.chain_consumer), in one
database transaction. Because the key and the fold are the same, the scanner meeting the
same logs later finds them stored and changes nothing; and if the scanner got there first,
the insert stores nothing new and re-deriving the booking from its events changes nothing either.

The scanner still owns the chain's canonical view: events stored here ahead of its cursor
are checked (and marked REMOVED if their block left the chain) when it scans their blocks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings

from chain_events.cursor import held_block_hash, indexed_contract
from chain_events.decoding import DecodedLog, decode_logs
from chain_events.ingest import apply_receipt_logs
from chain_events.rpc import RpcClient, get_receipt, get_rpc_client

log = logging.getLogger(__name__)


@dataclass
class ReceiptOutcome:
    """What the fast path found in a receipt and did with it."""

    tx_hash: str
    mined: bool
    block_number: int | None = None
    reverted: bool = False
    # The transaction was sent to our escrow contract (its `to`), even if it emitted nothing.
    called_escrow: bool = False
    # Our contract's booking events in this receipt, in log order.
    events: list[DecodedLog] = field(default_factory=list)
    # Rows this call inserted (the others were already stored, e.g. by the scanner).
    inserted: int = 0
    # Mined, but fewer than CHAIN_CONFIRMATIONS blocks deep: left to the scanner.
    awaiting_confirmations: bool = False
    # In a block other than the one the scanner applied at that height (the answering node is
    # on a fork the chain left): left to the scanner, nothing stored.
    off_canonical: bool = False
    # Bookings re-derived from their stored events and brought in line with them.
    bookings_applied: int = 0

    @property
    def touched_escrow(self) -> bool:
        return self.called_escrow or bool(self.events)


def process_transaction(tx_hash: str, *, actor: str = "", client: RpcClient | None = None) -> ReceiptOutcome:
    """Fetch `tx_hash`'s receipt and store + apply our contract's events from it.

    Idempotent and safe next to the scanner. RPC failures propagate as
    chain_events.rpc.RpcError. `tx_hash` must already be normalised (0x + 64 lower hex).
    """
    client = client or get_rpc_client()
    receipt = get_receipt(client, tx_hash)
    if receipt is None:
        return ReceiptOutcome(tx_hash=tx_hash, mined=False)
    contract = indexed_contract().contract
    outcome = ReceiptOutcome(
        tx_hash=tx_hash,
        mined=True,
        block_number=int(receipt["blockNumber"], 16),
        called_escrow=(receipt.get("to") or "").lower() == contract,
    )
    if int(receipt.get("status") or "0x0", 16) == 0:
        outcome.reverted = True  # a reverted transaction emits no logs: nothing to store
        return outcome
    outcome.events = decode_logs(receipt.get("logs") or [], contract_address=contract)
    if not outcome.events:
        return outcome
    held = held_block_hash(outcome.block_number)
    if held is not None and held != receipt["blockHash"].lower():
        log.warning("fast path: tx %s is in block %s %s, the scanner applied %s at that height: left to the scanner",
                    tx_hash, outcome.block_number, receipt["blockHash"], held)
        outcome.off_canonical = True
        return outcome
    confirmations = settings.CHAIN_CONFIRMATIONS
    if confirmations and int(client.call("eth_blockNumber"), 16) - outcome.block_number < confirmations:
        # The scanner only applies blocks this deep; applying earlier would let the fast
        # path and the scanner disagree about what counts as settled.
        outcome.awaiting_confirmations = True
        return outcome
    store_and_apply(outcome, actor=actor)
    return outcome


def store_and_apply(outcome: ReceiptOutcome, *, actor: str = "") -> None:
    """Store the receipt's decoded escrow events and apply the bookings they touch, in one
    transaction, through the scanner's own ingest (same insert, same fold and apply)."""
    result = apply_receipt_logs(outcome.events, actor=f"receipt:{actor}" if actor else "receipt")
    outcome.inserted = result.inserted
    outcome.bookings_applied = result.bookings
    log.info(
        "fast path: tx %s block %s: %d event(s), %d new, %d booking(s) re-derived",
        outcome.tx_hash, outcome.block_number, len(outcome.events), result.inserted, result.bookings,
    )
