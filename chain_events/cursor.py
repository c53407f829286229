"""The scanner's cursor on the indexed contract, the block hashes it holds, and its lock.

The cursor (SyncCursor, one per chain + contract) says how far the event store is complete:
everything up to `last_block` is stored. It remembers its block's hash and the hashes of the
unfinalized window (BlockHash), which is how a reorg is noticed (chain_events.reorg).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from common.db import server_binding_cursor
from common.singleflight import single_flight

from .answers import BlockHeader
from .models import BlockHash, SyncCursor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexedContract:
    """The chain and contract the indexer follows (settings.CHAIN_ID, ESCROW_CONTRACT_ADDRESS)."""

    chain_id: int
    contract: str  # lower-case hex, as the event store keys it

    @property
    def lock_name(self) -> str:
        """The single-flight name of its scans (common.singleflight.lock_key gives the key)."""
        return f"bookme-scan:{self.chain_id}:{self.contract}"


def indexed_contract() -> IndexedContract:
    return IndexedContract(settings.CHAIN_ID, settings.ESCROW_CONTRACT_ADDRESS.lower())


def scan_lock(contract: IndexedContract, wait_seconds: float = 0.0):
    """Single-flight of the scans of `contract`: a context manager yielding whether this
    process holds it. A PostgreSQL advisory lock (freed by the server if the worker dies, so a
    crashed scan never leaves a stale lock behind). With `wait_seconds` the caller polls for it
    that long before giving up: a beat's scan that arrives while the previous one is still
    following the head takes over when it ends, leaving no gap."""
    return single_flight(contract.lock_name, wait_seconds=wait_seconds, poll_seconds=settings.CHAIN_SCAN_POLL_SECONDS)


def get_cursor(contract: IndexedContract | None = None) -> SyncCursor:
    """The cursor of `contract` (default: the configured one), created if new."""
    contract = contract or indexed_contract()
    cursor, _ = SyncCursor.objects.get_or_create(
        chain_id=contract.chain_id,
        contract_address=contract.contract,
        defaults={"last_block": settings.CHAIN_START_BLOCK - 1, "range_size": settings.CHAIN_LOG_RANGE_INITIAL},
    )
    return cursor


def held_block_hash(number: int) -> str | None:
    """The hash of block `number` as the scanner applied it, while the block is in the
    unfinalized window it holds (None outside it)."""
    contract = indexed_contract()
    return (
        BlockHash.objects.filter(
            cursor__chain_id=contract.chain_id, cursor__contract_address=contract.contract, number=number
        )
        .values_list("hash", flat=True)
        .first()
    )


def rewind_cursor(block: int, *, reason: str = "") -> SyncCursor:
    """Move the cursor back to `block` (the next scan re-reads everything after it) and un-halt it.

    Rows stored for the rescanned blocks that the chain no longer has are marked REMOVED by
    the rescan (see chain_events.ingest), and their bookings re-derived. A block after the
    cursor's is refused (ValueError): the blocks skipped would never be scanned.
    """
    contract = indexed_contract()
    with transaction.atomic():
        cursor = get_cursor(contract)
        cursor = SyncCursor.objects.select_for_update().get(pk=cursor.pk)
        block = max(block, settings.CHAIN_START_BLOCK - 1)
        if block > cursor.last_block:
            raise ValueError(
                f"the cursor moves back only: block {block} is after its block {cursor.last_block}, "
                "and the blocks in between would never be scanned"
            )
        held = BlockHash.objects.filter(cursor=cursor, number=block).values_list("hash", flat=True).first()
        BlockHash.objects.filter(cursor=cursor, number__gt=block).delete()
        cursor.last_block = block
        cursor.last_block_hash = held or ""
        cursor.halted = False
        cursor.halt_reason = ""
        cursor.halted_at = None
        cursor.save()
    log.warning("sync cursor rewound to block %s: %s", block, reason or "-")
    return cursor


def move_cursor_past(
    cursor_pk: int, *, from_block: int, to_block: int, block_hash: str, range_size: int, head: int, final: int, now,
) -> bool:
    """Move the cursor past [from_block, to_block] (block_hash: to_block's), only if it stands
    at the block before the range; False if it does not (a staff rewind, or a range before
    this one that did not commit)."""
    return bool(SyncCursor.objects.filter(pk=cursor_pk, last_block=from_block - 1).update(
        last_block=to_block, last_block_hash=block_hash, range_size=range_size, head_block=head,
        finalized_block=final, last_scan_at=now,
    ))


def hold_window(cursor_pk: int, headers: dict[int, BlockHeader], final: int) -> None:
    """Remember the unfinalized blocks' hashes; forget those that became final."""
    with server_binding_cursor() as c:
        c.execute(f"DELETE FROM {BlockHash._meta.db_table} WHERE cursor_id = %s AND number <= %s", [cursor_pk, final])
        if headers:
            numbers = sorted(headers)
            c.execute(
                f"""INSERT INTO {BlockHash._meta.db_table} (cursor_id, number, hash, parent_hash)
                    SELECT %s, u.number, u.hash, u.parent_hash
                    FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(number, hash, parent_hash)
                    ON CONFLICT (cursor_id, number) DO UPDATE SET hash = EXCLUDED.hash,
                        parent_hash = EXCLUDED.parent_hash""",
                [cursor_pk, numbers, [headers[n].hash for n in numbers], [headers[n].parent_hash for n in numbers]],
            )
