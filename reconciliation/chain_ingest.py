"""Reconciliation's writes through the indexer: logs it fetched itself (reconciliation.chain_reads)
are stored and handed to the booking consumer by the indexer's own ingest
(chain_events.ingest), so a repair ends exactly as if the scanner had seen them, and running
both is idempotent. The status changes they cause are recorded as reconciliation's (a run) or
admin's (a staff rebuild), not the chain sync's.

The one module of reconciliation that calls into the indexer's ingest.
"""
from __future__ import annotations

from chain_events import ingest
from chain_events.reports import LogsOutcome
from chain_events.rpc import RpcClient
from escrow.chain_consumer import BookingConsumer
from escrow.models import StatusSource

_RECONCILIATION = BookingConsumer(status_source=StatusSource.RECONCILIATION)
_STAFF_REBUILD = BookingConsumer(status_source=StatusSource.ADMIN)


def apply_repair_logs(raw_logs: list[dict], *, actor: str) -> LogsOutcome:
    """Store and apply the logs of bookings the database is behind on (event source "reconciliation")."""
    return ingest.apply_logs(raw_logs, consumer=_RECONCILIATION, actor=actor)


def rebuild_bookings_from_logs(
    chain_booking_ids: list[str], raw_logs: list[dict], *, to_block: int, client: RpcClient, actor: str
) -> LogsOutcome:
    """Make these bookings' stored events what the chain holds up to `to_block` (`raw_logs` are all
    their logs up to it), and re-derive the bookings from them (status source "admin": staff asked)."""
    return ingest.rebuild_from_logs(
        chain_booking_ids, raw_logs, to_block=to_block, client=client, actor=actor, consumer=_STAFF_REBUILD
    )
