"""The event store's writes and reads, in bulk SQL (one statement per batch, not per row).

Catch-up stores tens of thousands of events per second, so rows go in with one
`INSERT ... SELECT FROM unnest(arrays)` per range instead of one ORM save per event. The key
(chain_id, tx_hash, log_index) makes every writer idempotent: a log already stored is left
alone, except that a row REMOVED by a reorg (or stored from another block) whose log is seen
again on the canonical chain is moved back in and re-applied.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, transaction

from common.db import server_binding_cursor

from . import metrics
from .decoding import DecodedLog, log_from_stored
from .models import ChainEvent, EventStatus

TABLE = ChainEvent._meta.db_table


_S = EventStatus
_UNSETTLED_SQL = "('PENDING', 'FAILED', 'RETRY', 'DEAD_LETTER')"


def insert_events(
    chain_id: int, contract: str, logs: list[DecodedLog], *, source: str, now, status: str = _S.PROCESSED
) -> dict[str, list[int]]:
    """Store the `logs` not stored yet; return {chain_booking_id: [row ids]} of rows this call inserted.

    Rows go in as `status` (PROCESSED by default: the caller applies them in the same
    transaction and marks the ones whose booking fails). Logs already stored are not returned
    and not touched: whoever stored them applied them; one a reorg removed (or stored from
    another block) is moved back in by `revive_events`, under its booking's lock.

    The lock order (see chain_events.consumers): this is the first step of every writer and
    takes no lock but the new rows' keys, in KEY order (tx hash, log index), so two writers
    inserting the same logs wait on each other in one direction only; it runs before any
    booking is locked, so a writer holding a booking never waits here on a writer that waits
    for that booking (the fast path against the scanner, issue 17).
    """
    if not logs:
        return {}
    logs = sorted(logs, key=lambda ev: ev.key)
    if len(logs) >= COPY_MIN_ROWS:
        try:
            with transaction.atomic():
                return _copy_new_events(chain_id, contract, logs, source=source, now=now, status=status)
        except IntegrityError:
            pass  # some of these logs are stored already (fast path, replay): the insert below sorts them out
    # ON CONFLICT DO NOTHING takes no lock on a stored row it meets (DO UPDATE would lock it even
    # where its WHERE is false); ORDER BY: the key order above, whatever the plan.
    insert_sql = f"""
        INSERT INTO {TABLE} (chain_id, contract_address, block_number, block_hash, tx_hash, tx_index,
            log_index, event_name, args, chain_booking_id, status, source, retry_count, next_retry_at,
            last_error, processed_at, created_at, updated_at)
        SELECT %s, %s, u.block_number, u.block_hash, u.tx_hash, u.tx_index, u.log_index, u.event_name,
            u.args::jsonb, u.chain_booking_id, %s, %s, 0, NULL, '', %s, %s, %s
        FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::int[], %b::int[], %b::text[], %b::text[], %b::text[])
            AS u(block_number, block_hash, tx_hash, tx_index, log_index, event_name, args, chain_booking_id)
        ORDER BY u.tx_hash, u.log_index
        ON CONFLICT (chain_id, tx_hash, log_index) DO NOTHING
        RETURNING id, chain_booking_id
    """
    processed_at = now if status == _S.PROCESSED else None
    out: dict[str, list[int]] = {}
    with server_binding_cursor() as cursor:
        cursor.execute(insert_sql, [
            chain_id, contract, status, source, processed_at, now, now, *_key_columns(logs),
            [ev.event_name for ev in logs], [ev.args_json() for ev in logs], [ev.chain_booking_id for ev in logs],
        ])
        for row_id, chain_booking_id in cursor.fetchall():
            out.setdefault(chain_booking_id, []).append(row_id)
    return out


def _key_columns(logs: list[DecodedLog]) -> list[list]:
    return [
        [ev.block_number for ev in logs],
        [ev.block_hash for ev in logs],
        [ev.tx_hash for ev in logs],
        [ev.tx_index for ev in logs],
        [ev.log_index for ev in logs],
    ]


def logs_to_revive(chain_id: int, logs: list[DecodedLog]) -> list[DecodedLog]:
    """Of `logs`, those stored as REMOVED (a reorg dropped them) or from another block: a plain
    read (no lock), so a caller learns whose bookings it must lock before `revive_events`."""
    if not logs:
        return []
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""SELECT e.tx_hash, e.log_index FROM {TABLE} AS e
                JOIN unnest(%b::bigint[], %b::text[], %b::text[], %b::int[], %b::int[])
                    AS u(block_number, block_hash, tx_hash, tx_index, log_index)
                  ON e.tx_hash = u.tx_hash AND e.log_index = u.log_index
                WHERE e.chain_id = %s AND (e.status = 'REMOVED' OR e.block_hash <> u.block_hash)""",
            [*_key_columns(logs), chain_id],
        )
        keys = set(cursor.fetchall())
    return [ev for ev in logs if ev.key in keys]


def revive_events(chain_id: int, logs: list[DecodedLog], *, now, status: str = _S.PROCESSED) -> dict[str, list[int]]:
    """Move back in the stored rows of `logs` that a reorg REMOVED or that were stored from
    another block (the log is on the canonical chain again, or mined again elsewhere); return
    {chain_booking_id: [row ids]} of the rows changed. An UPDATE, so a row lock: the caller
    holds their bookings' locks already (the lock order, see chain_events.consumers)."""
    if not logs:
        return {}
    processed_at = now if status == _S.PROCESSED else None
    out: dict[str, list[int]] = {}
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""UPDATE {TABLE} AS e SET
                    block_number = u.block_number, block_hash = u.block_hash, tx_index = u.tx_index,
                    status = %s, retry_count = 0, next_retry_at = NULL, last_error = '', processed_at = %s,
                    updated_at = %s
                FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::int[], %b::int[])
                    AS u(block_number, block_hash, tx_hash, tx_index, log_index)
                WHERE e.chain_id = %s AND e.tx_hash = u.tx_hash AND e.log_index = u.log_index
                  AND (e.status = 'REMOVED' OR e.block_hash <> u.block_hash)
                RETURNING e.id, e.chain_booking_id""",
            [status, processed_at, now, *_key_columns(logs), chain_id],
        )
        for row_id, chain_booking_id in cursor.fetchall():
            out.setdefault(chain_booking_id, []).append(row_id)
    return out


#: Batches this large (catch-up ranges) are first tried with COPY, see _copy_new_events.
COPY_MIN_ROWS = 64
_COPY_COLUMNS = (
    "id", "chain_id", "contract_address", "block_number", "block_hash", "tx_hash", "tx_index", "log_index",
    "event_name", "args", "chain_booking_id", "status", "source", "retry_count", "next_retry_at", "last_error",
    "processed_at", "created_at", "updated_at",
)


def _copy_new_events(chain_id: int, contract: str, logs: list[DecodedLog], *, source: str, now, status: str):
    """COPY the rows straight into the event table: catch-up's logs are all new, and COPY is the
    cheapest way in (no per-row conflict arbitration, rows streamed from C). Ids are drawn
    from the table's identity sequence first, so the caller still learns every row's id. A
    log stored before violates the unique key and aborts the whole COPY (the caller's
    savepoint): then insert_events' upsert handles the batch."""
    processed_at = now if status == _S.PROCESSED else None
    with server_binding_cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [TABLE, len(logs)]
        )
        ids = [row[0] for row in cursor.fetchall()]
        with cursor.copy(f"COPY {TABLE} ({', '.join(_COPY_COLUMNS)}) FROM STDIN") as copy:
            for row_id, ev in zip(ids, logs, strict=True):
                copy.write_row((
                    row_id, chain_id, contract, ev.block_number, ev.block_hash, ev.tx_hash, ev.tx_index, ev.log_index,
                    ev.event_name, ev.args_json(), ev.chain_booking_id, status, source, 0, None, "", processed_at,
                    now, now,
                ))
    out: dict[str, list[int]] = {}
    for row_id, ev in zip(ids, logs, strict=True):
        out.setdefault(ev.chain_booking_id, []).append(row_id)
    return out


def _json_value(value) -> dict:
    # Django has psycopg hand jsonb back as text (JSONField parses it); raw cursors see the text.
    return json.loads(value) if isinstance(value, str) else value


class LiveRow(NamedTuple):
    """A stored row not REMOVED, as far as removing it needs: its booking is locked first."""

    id: int
    chain_booking_id: str
    block_number: int
    block_hash: str


@dataclass(slots=True)
class StoredEvent:
    id: int
    status: str
    event: DecodedLog

    @property
    def unsettled(self) -> bool:
        return self.status in (_S.PENDING, _S.FAILED, _S.RETRY, _S.DEAD_LETTER)


def load_events(
    chain_id: int, contract: str, chain_booking_ids: list[str], *, exclude_ids=(), include_removed: bool = False
) -> dict[str, list[StoredEvent]]:
    """The stored events of these bookings (not REMOVED unless asked), minus `exclude_ids`."""
    if not chain_booking_ids:
        return {}
    sql = f"""
        SELECT id, status, chain_booking_id, event_name, block_number, block_hash, tx_hash, tx_index, log_index, args
        FROM {TABLE}
        WHERE chain_id = %s AND contract_address = %s AND chain_booking_id = ANY(%b::text[])
          {"" if include_removed else "AND status <> 'REMOVED'"}
          {"AND NOT (id = ANY(%b::bigint[]))" if exclude_ids else ""}
    """
    params = [chain_id, contract, list(chain_booking_ids)]
    if exclude_ids:
        params.append(list(exclude_ids))
    out: dict[str, list[StoredEvent]] = {}
    with server_binding_cursor() as cursor:
        cursor.execute(sql, params)
        for row_id, status, cid, name, block, block_hash, tx_hash, tx_index, log_index, args in cursor.fetchall():
            event = log_from_stored(
                chain_booking_id=cid, event_name=name, block_number=block, block_hash=block_hash,
                tx_hash=tx_hash, tx_index=tx_index, log_index=log_index, args=_json_value(args),
            )
            out.setdefault(cid, []).append(StoredEvent(row_id, status, event))
    return out


def mark_processed(event_ids: list[int], *, now) -> None:
    if not event_ids:
        return
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""UPDATE {TABLE} SET status = 'PROCESSED', processed_at = %s, next_retry_at = NULL,
                    last_error = '', updated_at = %s
                WHERE id = ANY(%b::bigint[]) AND status IN {_UNSETTLED_SQL}""",
            [now, now, list(event_ids)],
        )


def retry_delay(attempt: int) -> timedelta:
    """Exponential backoff after the `attempt`-th failure: base, 2×base, 4×base, ... capped."""
    base = settings.CHAIN_EVENT_RETRY_BASE_SECONDS
    return timedelta(seconds=min(base * 2 ** max(0, attempt - 1), settings.CHAIN_EVENT_RETRY_MAX_SECONDS))


def mark_failed(event_ids: list[int], error: str, *, now) -> dict[str, int]:
    """One more failed attempt for these events: FAILED with backoff, DEAD_LETTER at the limit.

    The delay after the n-th failure is `retry_delay(n)`. Events settled meanwhile by someone
    else (PROCESSED earlier, REMOVED) are left alone; rows inserted as PROCESSED by this very
    transaction (processed_at == now) are the ones whose apply just failed.
    """
    if not event_ids:
        return {"failed": 0, "dead_letter": 0}
    with server_binding_cursor() as cursor:
        # In SET expressions retry_count is the value before this failure (= attempt - 1).
        cursor.execute(
            f"""UPDATE {TABLE} SET
                    retry_count = retry_count + 1,
                    status = CASE WHEN retry_count + 1 >= %(max)s THEN 'DEAD_LETTER' ELSE 'FAILED' END,
                    next_retry_at = CASE WHEN retry_count + 1 >= %(max)s THEN NULL
                        ELSE %(now)s::timestamptz
                             + make_interval(secs => LEAST(%(base)s * power(2, retry_count), %(cap)s)) END,
                    last_error = %(error)s, processed_at = NULL, updated_at = %(now)s
                WHERE id = ANY(%(ids)b::bigint[]) AND status <> 'REMOVED'
                  AND (status <> 'PROCESSED' OR processed_at = %(now)s)
                RETURNING status, event_name""",
            {
                "max": settings.CHAIN_EVENT_MAX_ATTEMPTS,
                "now": now,
                "base": float(settings.CHAIN_EVENT_RETRY_BASE_SECONDS),
                "cap": float(settings.CHAIN_EVENT_RETRY_MAX_SECONDS),
                "error": error[:2000],
                "ids": list(event_ids),
            },
        )
        counts = {"failed": 0, "dead_letter": 0}
        for status, event_name in cursor.fetchall():
            if status == _S.DEAD_LETTER:
                counts["dead_letter"] += 1
                metrics.DEAD_LETTERS.labels(event_name).inc()
                metrics.EVENTS_PROCESSED.labels(event_name, "dead_letter").inc()
            else:
                counts["failed"] += 1
                metrics.EVENTS_PROCESSED.labels(event_name, "failed").inc()
    return counts


def mark_removed(event_ids: list[int], *, now) -> dict[str, list[int]]:
    """Mark rows REMOVED (their block left the chain); return {chain_booking_id: [ids]}."""
    if not event_ids:
        return {}
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""UPDATE {TABLE} SET status = 'REMOVED', next_retry_at = NULL, updated_at = %s
                WHERE id = ANY(%b::bigint[]) AND status <> 'REMOVED'
                RETURNING id, chain_booking_id, event_name""",
            [now, list(event_ids)],
        )
        out: dict[str, list[int]] = {}
        for row_id, cid, event_name in cursor.fetchall():
            out.setdefault(cid, []).append(row_id)
            metrics.EVENTS_PROCESSED.labels(event_name, "removed").inc()
        return out


def live_events_above(chain_id: int, contract: str, block_number: int) -> list[LiveRow]:
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""SELECT id, chain_booking_id, block_number, block_hash FROM {TABLE}
                WHERE chain_id = %s AND contract_address = %s AND block_number > %s AND status <> 'REMOVED'""",
            [chain_id, contract, block_number],
        )
        return [LiveRow(*row) for row in cursor.fetchall()]


def event_id(chain_id: int, tx_hash: str, log_index: int) -> int | None:
    return (
        ChainEvent.objects.filter(chain_id=chain_id, tx_hash=tx_hash, log_index=log_index)
        .values_list("id", flat=True)
        .first()
    )


def stale_events(
    chain_id: int, contract: str, from_block: int, to_block: int, logs: list[DecodedLog], *, now=None,
    chain_booking_ids: list[str] | None = None,
) -> list[LiveRow]:
    """Live rows stored for [from_block, to_block] (of these bookings only, if given) that the
    canonical logs of that range lack.

    They were stored ahead of the scanner (fast path, replay) from a block that has since
    left the chain, or the answer that gave `logs` is incomplete (see chain_events.ingest). With
    `now`, rows that `insert_events(..., now=now)` just wrote (updated_at = now, canonical by
    construction) are left out, so only rows stored earlier are read (none during a plain
    catch-up) and compared with the logs here.
    """
    by_booking = "" if chain_booking_ids is None else "AND chain_booking_id = ANY(%s::text[])"
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""SELECT id, chain_booking_id, block_number, block_hash, tx_hash, log_index FROM {TABLE}
                WHERE chain_id = %s AND contract_address = %s AND block_number BETWEEN %s AND %s
                  AND status <> 'REMOVED' AND updated_at IS DISTINCT FROM %s {by_booking}""",
            [chain_id, contract, from_block, to_block, now]
            + ([] if chain_booking_ids is None else [list(chain_booking_ids)]),
        )
        rows = cursor.fetchall()
    if not rows:
        return []
    keys = {log.key for log in logs}
    return [LiveRow(*row[:4]) for row in rows if (row[4], row[5]) not in keys]


def load_rows(event_ids: list[int]) -> dict[str, list[StoredEvent]]:
    """These event rows, grouped by chain booking id (for retries)."""
    if not event_ids:
        return {}
    out: dict[str, list[StoredEvent]] = {}
    with server_binding_cursor() as cursor:
        cursor.execute(
            f"""SELECT id, status, chain_booking_id, event_name, block_number, block_hash, tx_hash, tx_index,
                       log_index, args
                FROM {TABLE} WHERE id = ANY(%b::bigint[])""",
            [list(event_ids)],
        )
        for row_id, status, cid, name, block, block_hash, tx_hash, tx_index, log_index, args in cursor.fetchall():
            event = log_from_stored(
                chain_booking_id=cid, event_name=name, block_number=block, block_hash=block_hash,
                tx_hash=tx_hash, tx_index=tx_index, log_index=log_index, args=_json_value(args),
            )
            out.setdefault(cid, []).append(StoredEvent(row_id, status, event))
    return out
