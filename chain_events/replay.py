"""Replaying a block range (staff: `manage.py replay_events`, the admin): fetch it again and
re-apply it, without moving the cursor."""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .cursor import get_cursor, indexed_contract
from .decoding import BOOKING_EVENT_TOPICS, decode_logs
from .ingest import ingest_replayed_range
from .models import BlockHash
from .ranges import CanonicalHashes, smaller_range_size
from .reports import ReplayReport
from .rpc import (
    LogRangeTooLarge,
    RpcClient,
    RpcInconsistentAnswer,
    avoid_endpoint_of,
    get_chain_tip,
    get_logs_checked,
    get_rpc_client,
)

log = logging.getLogger(__name__)


def replay_range(
    from_block: int, to_block: int | None = None, *, client: RpcClient | None = None, actor: str = "replay"
) -> ReplayReport:
    """Re-fetch [from_block, to_block] (default: the confirmed head) and re-apply it.

    Idempotent: rows already stored are kept, every booking the range mentions is re-derived
    from all its events (so FAILED/DEAD_LETTER events of those bookings apply if they can
    now), and stored rows the canonical chain lacks are marked REMOVED. The cursor does not move.
    """
    client = client or get_rpc_client()
    contract = indexed_contract()
    tip = get_chain_tip(client, None)
    confirmed = tip.latest.number - settings.CHAIN_CONFIRMATIONS
    to_block = confirmed if to_block is None else min(to_block, confirmed)
    from_block = max(from_block, 0)
    report = ReplayReport(from_block=from_block, to_block=to_block)
    cursor = get_cursor(contract)
    held = dict(BlockHash.objects.filter(cursor=cursor).values_list("number", "hash"))
    size = cursor.range_size
    start = from_block
    while start <= to_block:
        end = min(start + size - 1, to_block)
        try:
            raw_logs, _, answered_by = get_logs_checked(
                client, address=contract.contract, topics=[BOOKING_EVENT_TOPICS], from_block=start, to_block=end,
                held_hashes={n: h for n, h in held.items() if start <= n <= end},
                max_answer_bytes=settings.CHAIN_LOG_MAX_ANSWER_BYTES,
            )
        except LogRangeTooLarge as exc:
            size = smaller_range_size(start, end, exc.suggested_to)
            continue
        logs = decode_logs(raw_logs, contract_address=contract.contract)
        try:
            with transaction.atomic():
                outcome = ingest_replayed_range(
                    contract, logs, start, end, actor=actor, now=timezone.now(),
                    # Replay often runs below the window: the hashes of blocks with stale rows are
                    # fetched when a row needs one.
                    canonical=CanonicalHashes(client), answered_by=answered_by,
                )
        except RpcInconsistentAnswer as exc:
            avoid_endpoint_of(client, exc)
            raise
        report.count(outcome)
        start = end + 1
    log.info("replayed blocks %d-%d: %s", from_block, to_block, report)
    return report
