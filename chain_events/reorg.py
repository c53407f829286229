"""Rolling a reorg back: to the highest block the cursor holds whose hash is still canonical.

The scanner notices a reorg when the canonical header at the cursor differs from the hash it
holds (or a new range's first block does not chain onto it). Every event above the common
ancestor is marked REMOVED, the affected bookings are re-derived from their remaining events
and the cursor moves back there: the next ranges rescan it. A reorg deeper than the window of
block hashes held halts the cursor for staff (an alert, never a silent rewrite).
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import metrics
from .answers import BlockHeader
from .cursor import IndexedContract
from .ingest import remove_events_above
from .models import BlockHash, SyncCursor
from .reports import ScanReport
from .rpc import get_headers

log = logging.getLogger(__name__)


def roll_back_reorg(
    client, contract: IndexedContract, cursor: SyncCursor, head: int, report: ScanReport, actor: str
) -> bool:
    """Roll back to the common ancestor. False when it lies below the window (cursor halted)."""
    window = list(
        BlockHash.objects.filter(cursor=cursor, number__lte=min(cursor.last_block, head))
        .order_by("-number")
        .values_list("number", "hash")
    )
    canonical: dict[int, BlockHeader] = {}
    batch = settings.CHAIN_HEADER_BATCH
    numbers = [n for n, _ in window]
    ancestor = None
    # Newest first, a batch at a time: a shallow reorg costs one round trip.
    for start in range(0, len(numbers), batch):
        chunk = numbers[start:start + batch]
        canonical.update(get_headers(client, chunk))
        for number, held in window[start:start + batch]:
            if canonical[number].hash == held:
                ancestor = (number, held)
                break
        if ancestor:
            break
    if ancestor is None:
        reason = (
            f"reorg below the unfinalized window: block {cursor.last_block} ({cursor.last_block_hash}) is no longer "
            f"canonical and none of the {len(window)} block hashes held is; rewind the cursor by hand"
        )
        SyncCursor.objects.filter(pk=cursor.pk).update(halted=True, halt_reason=reason, halted_at=timezone.now())
        metrics.DEEP_REORGS.inc()
        log.critical("scanner halted: %s", reason)
        report.halted = True
        report.errors.append(reason)
        return False
    number, held = ancestor
    depth = cursor.last_block - number
    with transaction.atomic():
        outcome = remove_events_above(contract, number, actor=f"{actor}:reorg", now=timezone.now())
        report.bookings += outcome.bookings
        BlockHash.objects.filter(cursor=cursor, number__gt=number).delete()
        SyncCursor.objects.filter(pk=cursor.pk).update(last_block=number, last_block_hash=held)
    report.removed += outcome.removed
    report.reorgs.append(depth)
    metrics.REORGS.inc()
    metrics.REORG_DEPTH.observe(depth)
    log.warning(
        "reorg: rolled back %d block(s) to %d (%s); %d event(s) removed, %d booking(s) re-derived",
        depth, number, held, outcome.removed, len(outcome.booking_ids),
    )
    return True
