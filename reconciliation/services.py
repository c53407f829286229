"""Reconciliation, orphans, operator completion and emergency actions, as plain functions.

Admin actions, Celery tasks (reconciliation/tasks.py) and management commands call these.
Actors are audit labels ("staff:alice", "system:reconciliation"); reasons are required for
every staff action and stored with it.

Public functions
----------------
reconcile_bookings(*, trigger="beat", actor=..., booking_ids=None, now=None) -> ReconciliationReport
    Compare every non-terminal booking (and those finished within RECONCILE_RECENT_SECONDS;
    or only `booking_ids`, primary keys) with the chain in batches, repair/flag, expire unused
    authorizations, and write a ReconciliationReport. Never raises for RPC trouble: the
    report says FAILED and counts errors.
reconcile_booking(booking, *, actor) -> ReconciliationReport       ("reconcile now" on one booking)
read_chain_bookings(chain_booking_ids, *, block="latest", client=None) -> dict[str, ChainBooking]
fetch_booking_logs(chain_booking_ids, *, to_block, client=None) -> list[dict]   (raw logs)
resolve_flag(flag, *, actor, note) -> ReconciliationFlag
acknowledge_attention(booking, *, actor, reason) -> Booking      (accept what the chain sync flagged)
rebuild_booking_from_chain(booking, *, actor, reason) -> Booking (a booking the database has ahead of the chain)
refund_orphan(orphan, *, actor, reason) -> SentTransaction          (emergencyCancelBooking)
ignore_orphan(orphan, *, actor, reason) -> Orphan
auto_refund_orphans(*, now=None) -> dict                            (policy: ORPHAN_AUTO_REFUND + grace)
emergency_cancel_booking(booking, *, actor, reason) -> SentTransaction   (full refund of a known booking)
complete_booking_by_operator(booking, *, actor, reason) -> SentTransaction
auto_complete_bookings(*, now=None) -> dict                          (PAID, window passed, not disputed)
pause_contract(*, actor, reason) -> EmergencyPause
unpause_contract(*, actor, reason) -> EmergencyPause   (owner-only on chain: needs CONTRACT_OWNER_PRIVATE_KEY)
contract_paused(*, use_cache=True) -> bool             (paused() view, cached CONTRACT_PAUSED_CACHE_SECONDS)

Errors: ActionRefused (bad input or state: the message says why), the TransactionError family
of reconciliation.transactions (the SentTransaction row records the outcome), RpcError.

Status changes reach bookings only through the chain handlers (chain_events.handlers, with the
event source "reconciliation") or escrow.services.expire_unused_authorizations; the
transactions sent here (refunds, completions) change bookings when their logs are scanned.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from common.audit import MAX_REASON_LENGTH
from chain_events import metrics, scanner
from chain_events.decoding import BOOKING_EVENT_TOPICS
from chain_events.models import EventSource, Orphan, OrphanStatus
from chain_events.rpc import RpcClient, RpcError, RpcInconsistentAnswer, RpcResponseError, get_rpc_client
from escrow.chain_effects import IMPLIED_CHAIN_STATUS
from escrow.models import Booking, BookingStatus, StatusSource
from escrow.services import expire_unused_authorizations
from escrow.state import TERMINAL_STATUSES

from .models import (
    EmergencyPause,
    FlagKind,
    PauseAction,
    ReconciliationFlag,
    ReconciliationReport,
    ReportStatus,
    SentTransaction,
    TxPurpose,
    TxStatus,
)
from .transactions import TransactionError, TransactionRejected, escrow_call, send_transaction, wait_for_transaction

log = logging.getLogger(__name__)

S = BookingStatus
SYSTEM_ACTOR = "system:reconciliation"
AUTO_COMPLETE_ACTOR = "system:auto-complete"
ORPHAN_REFUND_ACTOR = "system:orphan-auto-refund"
EVENT_SOURCE = EventSource.RECONCILIATION
MAX_ERROR_DETAILS = 50

# BookingEscrow.Status enum → the chain status names used by chain_events and escrow.chain_effects.
CHAIN_STATUS_NAMES = {0: "NONE", 1: "PAID", 2: "COMPLETED", 3: "CANCELLED"}
_CHAIN_RANK = {"NONE": 0, "PAID": 1, "COMPLETED": 2, "CANCELLED": 2}
_GET_BOOKINGS_SELECTOR = escrow_call("getBookings", [])[:4]
_PAUSED_CALLDATA = "0x" + escrow_call("paused").hex()
PAUSED_CACHE_KEY = "reconciliation:contract-paused"


class ActionRefused(Exception):
    """The action cannot be done (bad input, wrong state); the message says why."""


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ActionRefused("a reason is required")
    if len(reason) > MAX_REASON_LENGTH:
        raise ActionRefused(f"the reason must be at most {MAX_REASON_LENGTH} characters")
    return reason


# -- reading the chain ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChainBooking:
    chain_booking_id: str
    status: str  # NONE / PAID / COMPLETED / CANCELLED
    customer: str
    provider: str
    inviter: str
    amount: int
    platform_fee_rate: int
    inviter_fee_rate: int
    paid_at: int


_VIEW_WORDS = 8  # BookingView: 8 static 32-byte words


def decode_booking_views(result: str, chain_booking_ids: list[str]) -> list[ChainBooking]:
    """getBookings' return data (a dynamic array of static BookingView tuples) → ChainBooking list.

    The layout is fixed (offset, length, then 8 words per view), so it is sliced directly:
    10,000 views decode in milliseconds, where a generic ABI decode takes most of a second.
    """
    data = bytes.fromhex(result[2:] if result.startswith("0x") else result)
    if len(data) < 64 or int.from_bytes(data[:32], "big") != 32:
        raise RpcInconsistentAnswer("getBookings answer is not an array")
    count = int.from_bytes(data[32:64], "big")
    if count != len(chain_booking_ids) or len(data) != 64 + count * _VIEW_WORDS * 32:
        raise RpcInconsistentAnswer(f"getBookings returned {count} views for {len(chain_booking_ids)} ids")
    out = []
    for i, chain_booking_id in enumerate(chain_booking_ids):
        base = 64 + i * _VIEW_WORDS * 32
        w = [data[base + 32 * k: base + 32 * (k + 1)] for k in range(_VIEW_WORDS)]
        status = int.from_bytes(w[7], "big")
        if status not in CHAIN_STATUS_NAMES:
            raise RpcInconsistentAnswer(f"unknown booking status {status}")
        out.append(ChainBooking(
            chain_booking_id=chain_booking_id,
            status=CHAIN_STATUS_NAMES[status],
            customer="0x" + w[0][12:].hex(),
            provider="0x" + w[1][12:].hex(),
            inviter="0x" + w[2][12:].hex(),
            amount=int.from_bytes(w[3], "big"),
            platform_fee_rate=int.from_bytes(w[4], "big"),
            inviter_fee_rate=int.from_bytes(w[5], "big"),
            paid_at=int.from_bytes(w[6], "big"),
        ))
    return out


def _get_bookings_call(ids: list[str], block) -> tuple[str, list]:
    # getBookings(bytes32[]): selector, offset 32, length, the ids.
    body = (32).to_bytes(32, "big") + len(ids).to_bytes(32, "big") + b"".join(bytes.fromhex(i[2:]) for i in ids)
    data = "0x" + (_GET_BOOKINGS_SELECTOR + body).hex()
    block_tag = hex(block) if isinstance(block, int) else block
    return "eth_call", [{"to": settings.ESCROW_CONTRACT_ADDRESS, "data": data}, block_tag]


def read_chain_bookings(
    chain_booking_ids: list[str], *, block="latest", client: RpcClient | None = None
) -> dict[str, ChainBooking]:
    """The contract's view of these booking ids at `block`: RECONCILE_BATCH_SIZE ids per
    getBookings eth_call, RECONCILE_CALLS_PER_REQUEST calls per JSON-RPC batch (one round trip)."""
    client = client or get_rpc_client()
    size = settings.RECONCILE_BATCH_SIZE
    chunks = [chain_booking_ids[i: i + size] for i in range(0, len(chain_booking_ids), size)]
    out: dict[str, ChainBooking] = {}
    per_request = settings.RECONCILE_CALLS_PER_REQUEST
    for start in range(0, len(chunks), per_request):
        group = chunks[start: start + per_request]
        decoded: list[list[ChainBooking]] = []

        def validate(results, group=group):
            decoded.clear()
            decoded.extend(decode_booking_views(r, ids) for r, ids in zip(results, group))

        client.batch([_get_bookings_call(ids, block) for ids in group], validate=validate)
        for views in decoded:
            for view in views:
                out[view.chain_booking_id] = view
    return out


def fetch_booking_logs(
    chain_booking_ids: list[str], *, to_block: int, from_block: int | None = None, client: RpcClient | None = None
) -> list[dict]:
    """Every booking event of these ids up to `to_block`: eth_getLogs filtered on the indexed
    bookingId topic (RECONCILE_LOG_TOPIC_BATCH ids OR-ed per filter), over block ranges of at
    most CHAIN_LOG_RANGE_MAX blocks, many filters per JSON-RPC batch. A range the node refuses
    is split in two and asked again."""
    client = client or get_rpc_client()
    from_block = settings.CHAIN_START_BLOCK if from_block is None else from_block
    escrow = settings.ESCROW_CONTRACT_ADDRESS.lower()
    width = settings.CHAIN_LOG_RANGE_MAX
    topic_batch = settings.RECONCILE_LOG_TOPIC_BATCH
    pending = [
        (chain_booking_ids[i: i + topic_batch], start, min(start + width - 1, to_block))
        for i in range(0, len(chain_booking_ids), topic_batch)
        for start in range(from_block, to_block + 1, width)
    ]
    logs: list[dict] = []
    while pending:
        group, pending = pending[: settings.RECONCILE_CALLS_PER_REQUEST], pending[settings.RECONCILE_CALLS_PER_REQUEST:]
        calls = [
            ("eth_getLogs", [{"address": settings.ESCROW_CONTRACT_ADDRESS, "fromBlock": hex(lo), "toBlock": hex(hi),
                              "topics": [BOOKING_EVENT_TOPICS, ids]}])
            for ids, lo, hi in group
        ]

        def validate(results, group=group):
            for result, (ids, lo, hi) in zip(results, group):
                if isinstance(result, RpcResponseError):
                    continue
                wanted = set(ids)
                for entry in result:
                    if entry["address"].lower() != escrow or entry["topics"][1].lower() not in wanted:
                        raise RpcInconsistentAnswer("eth_getLogs returned a log outside the filter")
                    if not lo <= int(entry["blockNumber"], 16) <= hi or entry.get("removed"):
                        raise RpcInconsistentAnswer("eth_getLogs returned a log outside the range or removed")

        results = client.batch(calls, allow_errors=True, validate=validate)
        for result, (ids, lo, hi) in zip(results, group):
            if isinstance(result, RpcResponseError):
                if hi > lo:  # too many results / range too wide: halve it
                    mid = (lo + hi) // 2
                    pending += [(ids, lo, mid), (ids, mid + 1, hi)]
                    continue
                if len(ids) > 1:
                    half = len(ids) // 2
                    pending += [(ids[:half], lo, hi), (ids[half:], lo, hi)]
                    continue
                raise result
            logs.extend(result)
    return logs


# -- reconciliation -----------------------------------------------------------------------------
_FINISHED = tuple(TERMINAL_STATUSES) + (S.EXPIRED,)


def _confirmed_block(client: RpcClient) -> int:
    """The newest block CHAIN_CONFIRMATIONS deep: what reconciliation compares against."""
    return max(int(client.call("eth_blockNumber"), 16) - settings.CHAIN_CONFIRMATIONS, 0)


def reconciliation_candidates(now: datetime, booking_ids=None):
    """(pk, chain_booking_id) of the bookings a run checks, in pk order."""
    queryset = Booking.objects.all()
    if booking_ids is not None:
        queryset = queryset.filter(pk__in=list(booking_ids))
    else:
        recent = now - timedelta(seconds=settings.RECONCILE_RECENT_SECONDS)
        queryset = queryset.filter(~Q(status__in=_FINISHED) | Q(status_changed_at__gte=recent))
    return list(queryset.order_by("pk").values_list("pk", "chain_booking_id"))


class _Run:
    """Counters of one run, written to its report at the end."""

    def __init__(self, report: ReconciliationReport):
        self.report = report

    def error(self, count: int, message: str) -> None:
        self.report.errors += count
        if len(self.report.error_details) < MAX_ERROR_DETAILS:
            self.report.error_details.append(message[:500])


def reconcile_bookings(
    *, trigger: str = "beat", actor: str = SYSTEM_ACTOR, booking_ids=None, now: datetime | None = None
) -> ReconciliationReport:
    now = now or timezone.now()
    started = time.perf_counter()
    client = get_rpc_client()
    round_trips_before = client.round_trips
    report = ReconciliationReport.objects.create(trigger=trigger, actor=actor[:200])
    run = _Run(report)
    candidates = reconciliation_candidates(now, booking_ids)
    done = 0
    try:
        block = _confirmed_block(client)
        report.chain_block = block
        group_size = settings.RECONCILE_BATCH_SIZE * settings.RECONCILE_CALLS_PER_REQUEST
        for start in range(0, len(candidates), group_size):
            group = candidates[start: start + group_size]
            _reconcile_group(client, group, block, run, now)
            done += len(group)
        if booking_ids is None:
            expiry = expire_unused_authorizations(now=now)
            report.expired = expiry["expired"]
            report.cancellations_lapsed = expiry["cancellation_lapsed"]
        report.status = ReportStatus.OK
    except RpcError as exc:
        # The group in hand was not applied (its repair transaction never started or rolled
        # back); everything before it is complete. The rest waits for the next run.
        run.error(len(candidates) - done, f"RPC unavailable, {len(candidates) - done} booking(s) not checked: {exc}")
        report.status = ReportStatus.FAILED
    except Exception as exc:  # a bug must still leave a finished report behind
        log.exception("reconciliation run %s failed", report.pk)
        run.error(len(candidates) - done, f"{type(exc).__name__}: {exc}")
        report.status = ReportStatus.FAILED
    finally:
        report.finished_at = timezone.now()
        report.duration_seconds = time.perf_counter() - started
        report.rpc_round_trips = client.round_trips - round_trips_before
        report.save()
        _export_metrics(report)
    log.info("%s", report)
    return report


def _export_metrics(report: ReconciliationReport) -> None:
    for kind in metrics.LAST_REPORT_KINDS:
        count = getattr(report, kind)
        if count:
            metrics.RECONCILIATION_MISMATCHES.labels(kind).inc(count)
    metrics.RECONCILIATION_SECONDS.observe(report.duration_seconds)


def reconcile_booking(booking: Booking, *, actor: str) -> ReconciliationReport:
    return reconcile_bookings(trigger="admin", actor=actor, booking_ids=[booking.pk])


def _reconcile_group(client: RpcClient, group: list[tuple[int, str]], block: int, run: _Run, now) -> None:
    report = run.report
    ids = [cid for _, cid in group]
    chain = read_chain_bookings(ids, block=block, client=client)
    # The database is read after the chain: whatever the chain shows that the database does not
    # was really missed (not merely in flight through the scanner).
    db_status = dict(Booking.objects.filter(pk__in=[pk for pk, _ in group]).values_list("chain_booking_id", "status"))
    report.checked += len(ids)
    behind, ahead, conflicting = [], [], []
    for cid in ids:
        if cid not in db_status:
            report.checked -= 1  # deleted meanwhile
            continue
        implied = IMPLIED_CHAIN_STATUS[db_status[cid]]
        actual = chain[cid].status
        if actual == implied:
            report.in_agreement += 1
        elif _CHAIN_RANK[actual] > _CHAIN_RANK[implied]:
            behind.append(cid)
        elif _CHAIN_RANK[actual] < _CHAIN_RANK[implied]:
            ahead.append(cid)
        else:
            conflicting.append(cid)
    if ahead:
        # The database may have moved past our snapshot block (scanner near the head): only
        # what is still ahead of the chain's latest state is a real difference.
        latest = read_chain_bookings(ahead, block="latest", client=client)
        still = []
        for cid in ahead:
            if _CHAIN_RANK[latest[cid].status] >= _CHAIN_RANK[IMPLIED_CHAIN_STATUS[db_status[cid]]]:
                report.in_agreement += 1
            else:
                still.append(cid)
        ahead = still
    to_repair = behind + conflicting
    raw_logs = fetch_booking_logs(to_repair, to_block=block, client=client) if to_repair else []
    with transaction.atomic():  # repairs and flags of this group: all or nothing
        if to_repair:
            # The scanner's own store + fold (source "reconciliation"): idempotent with the scanner.
            outcome = scanner.apply_logs(raw_logs, source=EVENT_SOURCE, actor=SYSTEM_ACTOR)
            if outcome.failed_events:
                run.error(outcome.failed_events, f"{outcome.failed_events} event(s) failed to apply (see chain events)")
        for cid in ahead:
            _flag(cid, FlagKind.DATABASE_AHEAD, chain[cid], block, run,
                  f"database says {db_status[cid]} but the chain shows {chain[cid].status} at block {block}")
    if to_repair:
        after = dict(Booking.objects.filter(chain_booking_id__in=to_repair).values_list("chain_booking_id", "status"))
        unrepaired = []
        for cid in to_repair:
            implied_after = IMPLIED_CHAIN_STATUS[after[cid]]
            # Past the chain's state at `block` counts too: the scanner may have applied a later
            # event (a completion after the payment repaired here) before this re-read.
            if implied_after == chain[cid].status or _CHAIN_RANK[implied_after] > _CHAIN_RANK[chain[cid].status]:
                report.repaired += 1
            else:
                unrepaired.append(cid)
        with transaction.atomic():
            for cid in unrepaired:
                kind = FlagKind.CONFLICT if cid in conflicting else FlagKind.UNREPAIRED
                _flag(cid, kind, chain[cid], block, run,
                      f"database says {after[cid]}, chain shows {chain[cid].status} at block {block}; "
                      "its logs did not bring the booking in line")


#: Start of the attention line a reconciliation flag adds to its booking (removed when resolved).
_FLAG_LINE_PREFIX = "reconciliation: "


def _flag(chain_booking_id: str, kind: str, chain: ChainBooking, block: int, run: _Run, detail: str) -> None:
    """Open a flag (one open flag per booking and kind) and mark the booking for attention."""
    booking = Booking.objects.select_for_update().get(chain_booking_id=chain_booking_id)
    flag, created = ReconciliationFlag.objects.get_or_create(
        booking=booking, kind=kind, resolved_at=None,
        defaults={"report": run.report, "database_status": booking.status, "chain_status": chain.status,
                  "chain_block": block, "detail": detail},
    )
    run.report.flagged += 1
    reason = _FLAG_LINE_PREFIX + detail
    if created and reason not in Booking.attention_reasons_raised(booking.attention_reason):
        booking.needs_attention = True
        booking.attention_reason = "\n".join(filter(None, [booking.attention_reason, reason]))
        booking.save(update_fields=["needs_attention", "attention_reason", "updated_at"])
        log.warning("booking %s flagged (%s): %s", booking.uuid, kind, detail)


def resolve_flag(flag: ReconciliationFlag, *, actor: str, note: str) -> ReconciliationFlag:
    note = _require_reason(note)
    with transaction.atomic():
        # The booking first, its flag after: the order of every writer of both (_flag, the
        # chain sync, rebuild_booking_from_chain).
        booking = Booking.objects.select_for_update().get(pk=flag.booking_id)
        flag = ReconciliationFlag.objects.select_for_update().get(pk=flag.pk)
        if flag.resolved_at is not None:
            raise ActionRefused("this flag is already resolved")
        flag.resolved_at, flag.resolved_by, flag.resolution_note = timezone.now(), actor[:200], note
        flag.save(update_fields=["resolved_at", "resolved_by", "resolution_note"])
        # The booking leaves the attention list once nothing else keeps it there: this flag's
        # line goes; other reasons (another open flag, a payment mismatch) keep it flagged.
        lines = [line for line in booking.attention_reason.splitlines() if line != _FLAG_LINE_PREFIX + flag.detail]
        booking.attention_reason = "\n".join(lines)
        booking.needs_attention = bool(booking.open_attention_lines())
        booking.save(update_fields=["needs_attention", "attention_reason", "updated_at"])
    return flag


def acknowledge_attention(booking: Booking, *, actor: str, reason: str, now: datetime | None = None) -> Booking:
    """Staff checked what the chain sync flagged on a booking (a payment that differs from the
    booking, an event sequence the contract cannot produce) and accept it: the booking leaves
    the attention list, so auto-complete takes it again when its window passes. Without this,
    such a booking could only be refunded. Each line stays, marked with who, when and why; a
    new reason (e.g. another payment after a reorg) raises the flag again. Lines of open
    reconciliation flags are left to resolve_flag."""
    reason = _require_reason(reason)
    now = now or timezone.now()
    with transaction.atomic():
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        open_lines = booking.open_attention_lines()
        to_acknowledge = {line for line in open_lines if not line.startswith(_FLAG_LINE_PREFIX)}
        if not booking.needs_attention:
            raise ActionRefused("nothing to acknowledge")
        if open_lines and not to_acknowledge:
            raise ActionRefused("only open reconciliation flags keep it on the list: resolve those flags")
        note = f"{actor} at {now:%Y-%m-%d %H:%M:%S} UTC: {reason}"
        booking.attention_reason = "\n".join(
            Booking.acknowledged_line(line, note) if line in to_acknowledge else line
            for line in booking.attention_reason.splitlines()
        )
        booking.needs_attention = bool(booking.open_attention_lines())
        booking.save(update_fields=["needs_attention", "attention_reason", "updated_at"])
    log.info("booking %s: attention acknowledged by %s: %s", booking.uuid, actor, reason)
    return booking


def rebuild_booking_from_chain(booking: Booking, *, actor: str, reason: str) -> Booking:
    """The way out for a booking the database has ahead of the chain (flag DATABASE_AHEAD:
    a status set by hand, a stored event whose block left the chain unnoticed), which
    reconciliation only flags, never rewrites from a guess: staff decide, and the chain's
    state at the confirmed head is applied.

    The booking's events are fetched from the chain and its store made to match them
    (scanner.rebuild_bookings: missing rows stored, rows whose block left the chain marked
    REMOVED), then the booking is re-derived from them. If its status then does not imply
    the status the contract's getBooking gives (the node's answers disagree: logs left out),
    nothing is changed and the action is refused; the check is on the status only. Its open
    reconciliation flags are resolved with the reason.
    """
    reason = _require_reason(reason)
    client = get_rpc_client()
    block = _confirmed_block(client)
    chain_booking_id = booking.chain_booking_id
    chain = read_chain_bookings([chain_booking_id], block=block, client=client)[chain_booking_id]
    raw_logs = fetch_booking_logs([chain_booking_id], to_block=block, client=client)
    with transaction.atomic():
        before = Booking.objects.get(pk=booking.pk).status
        scanner.rebuild_bookings(
            [chain_booking_id], raw_logs, to_block=block, client=client, actor=actor, status_source=StatusSource.ADMIN
        )
        booking = Booking.objects.get(pk=booking.pk)
        if IMPLIED_CHAIN_STATUS[booking.status] != chain.status:
            raise ActionRefused(
                f"the chain shows {chain.status} at block {block} but its logs bring the booking to "
                f"{booking.status}: nothing was changed; try again, or reconcile"
            )
        for flag in ReconciliationFlag.objects.filter(booking=booking, resolved_at=None):
            resolve_flag(flag, actor=actor, note=f"rebuilt from the chain at block {block} ({before} → "
                                                 f"{booking.status}): {reason}")
    log.warning("booking %s rebuilt from the chain by %s: %s → %s (%s)", booking.uuid, actor, before,
                booking.status, reason)
    return Booking.objects.get(pk=booking.pk)


# -- sending with a single-flight guard -----------------------------------------------------------
@contextmanager
def _in_flight_guard(key: str, actor: str):
    """A Redis mutex (cache.add is SET NX) so two staff clicks or two workers never send the same
    refund/completion twice; released when the send finishes (or expires after the receipt timeout)."""
    if not cache.add(key, actor, timeout=int(settings.TX_RECEIPT_TIMEOUT_SECONDS) + 60):
        raise ActionRefused("the same action is already in progress")
    try:
        yield
    finally:
        cache.delete(key)


def _already_sent(**filters) -> SentTransaction | None:
    return SentTransaction.objects.filter(
        status__in=[TxStatus.PREPARING, TxStatus.SUBMITTED, TxStatus.MINED], **filters
    ).order_by("-created_at").first()


def _booking_id_bytes(chain_booking_id: str) -> bytes:
    return bytes.fromhex(chain_booking_id[2:])


# -- orphans ----------------------------------------------------------------------------------------
def refund_orphan(orphan: Orphan, *, actor: str, reason: str) -> SentTransaction:
    """Refund an orphan's payment in full to its customer with emergencyCancelBooking (operator).

    The orphan becomes RESOLVED when its BookingCancelled log is processed (scanner / handlers,
    resolved_by "chain"); this records who asked and why in its note and on the transaction.
    An IGNORED orphan whose money is still escrowed can be refunded too (staff changed their
    mind, or new facts came in): it is reopened first, with who and why in its note, so the
    money never stays in the escrow for want of a way out.
    """
    reason = _require_reason(reason)
    with _in_flight_guard(f"reconciliation:orphan-refund:{orphan.pk}", actor):
        orphan = Orphan.objects.get(pk=orphan.pk)
        if orphan.status not in (OrphanStatus.OPEN, OrphanStatus.IGNORED):
            raise ActionRefused(f"the orphan is {orphan.status}, not OPEN or IGNORED")
        if orphan.chain_status != "PAID":
            raise ActionRefused(f"nothing to refund: the chain shows {orphan.chain_status}")
        previous = _already_sent(orphan=orphan, purpose=TxPurpose.EMERGENCY_CANCEL)
        if previous is not None:
            raise ActionRefused(f"a refund was already sent ({previous.status}, tx {previous.tx_hash or 'pending'})")
        if orphan.status == OrphanStatus.IGNORED:
            changed = orphan.move_to(OrphanStatus.OPEN, f"reopened by {actor} to refund it: {reason}")
            orphan.save(update_fields=[*changed, "updated_at"])
        record = send_transaction(
            purpose=TxPurpose.EMERGENCY_CANCEL,
            data=escrow_call("emergencyCancelBooking", _booking_id_bytes(orphan.chain_booking_id), reason),
            actor=actor, reason=reason, orphan=orphan,
        )
    Orphan.objects.filter(pk=orphan.pk).update(
        note=(orphan.note + f"\nrefund sent by {actor} in tx {record.tx_hash}: {reason}").strip(),
        updated_at=timezone.now(),
    )
    return record


def ignore_orphan(orphan: Orphan, *, actor: str, reason: str) -> Orphan:
    """Staff decided no refund is due (e.g. the booking exists elsewhere): IGNORED, with why."""
    reason = _require_reason(reason)
    with transaction.atomic():
        orphan = Orphan.objects.select_for_update().get(pk=orphan.pk)
        if orphan.status != OrphanStatus.OPEN:
            raise ActionRefused(f"the orphan is {orphan.status}, not OPEN")
        changed = orphan.move_to(OrphanStatus.IGNORED, f"ignored by {actor}: {reason}", by=actor, at=timezone.now())
        orphan.save(update_fields=[*changed, "updated_at"])
    return orphan


def auto_refund_orphans(*, now: datetime | None = None) -> dict:
    """Policy refunds: with ORPHAN_AUTO_REFUND on, OPEN orphans still escrowed on chain and older
    than ORPHAN_REFUND_GRACE_SECONDS are refunded (one failure does not stop the others)."""
    counts = {"enabled": settings.ORPHAN_AUTO_REFUND, "refunded": 0, "failed": 0, "skipped": 0}
    if not settings.ORPHAN_AUTO_REFUND:
        return counts
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.ORPHAN_REFUND_GRACE_SECONDS)
    due = Orphan.objects.filter(
        chain_id=settings.CHAIN_ID, contract_address=settings.ESCROW_CONTRACT_ADDRESS.lower(),
        status=OrphanStatus.OPEN, chain_status="PAID", created_at__lte=cutoff,
    ).order_by("created_at")
    for orphan in due:
        try:
            refund_orphan(orphan, actor=ORPHAN_REFUND_ACTOR,
                          reason=f"automatic refund: paid on chain, unknown to the database for over "
                                 f"{settings.ORPHAN_REFUND_GRACE_SECONDS} s")
            counts["refunded"] += 1
        except ActionRefused:
            counts["skipped"] += 1
        except (TransactionError, RpcError) as exc:
            counts["failed"] += 1
            log.error("automatic refund of orphan %s failed: %s", orphan.pk, exc)
    return counts


# -- bookings: emergency cancel and operator completion -----------------------------------------------
def emergency_cancel_booking(booking: Booking, *, actor: str, reason: str) -> SentTransaction:
    """Full refund of a paid booking to its customer (emergencyCancelBooking; works while paused).
    The booking becomes CANCELLED when the BookingCancelled log is processed.

    What decides is the contract's state, read now, not the booking's status: money escrowed on
    chain must have a way out even when the database disagrees (a payment event that could not
    be applied, a booking expired meanwhile)."""
    reason = _require_reason(reason)
    with _in_flight_guard(f"reconciliation:booking-tx:{booking.pk}", actor):
        booking = Booking.objects.get(pk=booking.pk)
        on_chain = read_chain_bookings([booking.chain_booking_id])[booking.chain_booking_id].status
        if on_chain != "PAID":
            raise ActionRefused(
                f"nothing to refund: the chain shows {on_chain} for this booking (the database says {booking.status})"
            )
        previous = _already_sent(booking=booking, purpose__in=[TxPurpose.EMERGENCY_CANCEL, TxPurpose.OPERATOR_COMPLETE])
        if previous is not None:
            raise ActionRefused(f"a {previous.purpose} transaction was already sent ({previous.status})")
        return send_transaction(
            purpose=TxPurpose.EMERGENCY_CANCEL,
            data=escrow_call("emergencyCancelBooking", _booking_id_bytes(booking.chain_booking_id), reason),
            actor=actor, reason=reason, booking=booking,
        )


def complete_booking_by_operator(booking: Booking, *, actor: str, reason: str, wait: bool = True) -> SentTransaction:
    """completeServiceByOperator for one PAID booking (the contract checks paidAt + its delay)."""
    reason = _require_reason(reason)
    with _in_flight_guard(f"reconciliation:booking-tx:{booking.pk}", actor):
        booking = Booking.objects.get(pk=booking.pk)
        if booking.status != S.PAID:
            raise ActionRefused(f"the booking is {booking.status}, not PAID")
        previous = _already_sent(booking=booking, purpose__in=[TxPurpose.EMERGENCY_CANCEL, TxPurpose.OPERATOR_COMPLETE])
        if previous is not None:
            raise ActionRefused(f"a {previous.purpose} transaction was already sent ({previous.status})")
        return send_transaction(
            purpose=TxPurpose.OPERATOR_COMPLETE,
            data=escrow_call("completeServiceByOperator", _booking_id_bytes(booking.chain_booking_id)),
            actor=actor, reason=reason, booking=booking, wait=wait,
        )


def auto_complete_candidates(now: datetime):
    """PAID bookings whose service window passed, not under dispute: no open reconciliation flag,
    not needing attention, no completion/refund already sent (PENDING_CANCELLATION is not PAID)."""
    window_end = now - timedelta(seconds=settings.AUTO_COMPLETE_AFTER_SECONDS)
    open_flag = ReconciliationFlag.objects.filter(booking=OuterRef("pk"), resolved_at__isnull=True)
    sent = SentTransaction.objects.filter(
        booking=OuterRef("pk"), purpose__in=[TxPurpose.OPERATOR_COMPLETE, TxPurpose.EMERGENCY_CANCEL],
        status__in=[TxStatus.PREPARING, TxStatus.SUBMITTED, TxStatus.MINED],
    )
    return (
        Booking.objects.filter(status=S.PAID, scheduled_at__lte=window_end, needs_attention=False)
        .filter(~Exists(open_flag), ~Exists(sent))
        .order_by("scheduled_at")
    )


def auto_complete_bookings(*, now: datetime | None = None) -> dict:
    """Send completeServiceByOperator for every due booking (all sent first, then awaited, so a
    batch costs about one block). The bookings become COMPLETED when the scanner sees the logs."""
    now = now or timezone.now()
    counts = {"sent": 0, "completed_on_chain": 0, "not_ready": 0, "failed": 0, "paused": False}
    if contract_paused(use_cache=False):
        counts["paused"] = True  # completions revert while paused; refunds still work
        return counts
    sent = []
    for booking in auto_complete_candidates(now)[: settings.AUTO_COMPLETE_MAX_PER_RUN]:
        try:
            sent.append(complete_booking_by_operator(
                booking, actor=AUTO_COMPLETE_ACTOR, wait=False,
                reason=f"service window passed ({settings.AUTO_COMPLETE_AFTER_SECONDS} s after the scheduled time)",
            ))
            counts["sent"] += 1
        except TransactionRejected as exc:
            # e.g. ServiceWindowNotPassed: the contract counts from paidAt, not the scheduled time.
            counts["not_ready"] += 1
            log.info("auto-complete of booking %s not possible yet: %s", booking.uuid, exc)
        except ActionRefused:
            continue
        except (TransactionError, RpcError) as exc:
            counts["failed"] += 1
            log.error("auto-complete of booking %s failed: %s", booking.uuid, exc)
    for record in sent:
        try:
            wait_for_transaction(record)
            counts["completed_on_chain"] += 1
        except (TransactionError, RpcError) as exc:
            counts["failed"] += 1
            log.error("auto-complete tx %s: %s", record.tx_hash, exc)
    return counts


# -- emergency pause -------------------------------------------------------------------------------
def contract_paused(*, use_cache: bool = True) -> bool:
    """The contract's paused() view, cached CONTRACT_PAUSED_CACHE_SECONDS. RpcError if unreachable."""
    if use_cache:
        cached = cache.get(PAUSED_CACHE_KEY)
        if cached is not None:
            return cached
    result = get_rpc_client().call("eth_call", [{"to": settings.ESCROW_CONTRACT_ADDRESS, "data": _PAUSED_CALLDATA}, "latest"])
    paused = int(result, 16) != 0
    cache.set(PAUSED_CACHE_KEY, paused, timeout=settings.CONTRACT_PAUSED_CACHE_SECONDS)
    return paused


def _pause_action(action: str, *, actor: str, reason: str) -> EmergencyPause:
    reason = _require_reason(reason)
    entry = EmergencyPause.objects.create(action=action, actor=actor[:200], reason=reason)
    purpose = TxPurpose.PAUSE if action == PauseAction.PAUSE else TxPurpose.UNPAUSE
    try:
        record = send_transaction(
            purpose=purpose, data=escrow_call(action), actor=actor, reason=reason,
            account=owner_account() if action == PauseAction.UNPAUSE else None,
        )
    except TransactionError as exc:
        entry.transaction = exc.record
        entry.save(update_fields=["transaction"])
        raise
    finally:
        cache.delete(PAUSED_CACHE_KEY)
    entry.transaction, entry.succeeded = record, True
    entry.save(update_fields=["transaction", "succeeded"])
    log.warning("contract %sd by %s: %s (tx %s)", action, actor, reason, record.tx_hash)
    return entry


def pause_contract(*, actor: str, reason: str) -> EmergencyPause:
    """Pause the escrow (operator key): payments and completions stop; refunds, cancellations
    and the scanner keep working. Recorded as an EmergencyPause with its transaction."""
    return _pause_action(PauseAction.PAUSE, actor=actor, reason=reason)


def unpause_contract(*, actor: str, reason: str) -> EmergencyPause:
    """Unpause. The contract allows only its owner: CONTRACT_OWNER_PRIVATE_KEY must be set here
    (in production the owner is usually a multisig that unpauses outside this backend)."""
    return _pause_action(PauseAction.UNPAUSE, actor=actor, reason=reason)


def owner_account():
    from eth_account import Account

    secret = getattr(settings, "CONTRACT_OWNER_PRIVATE_KEY", None)
    if secret is None:
        raise ActionRefused("unpause is owner-only on chain and CONTRACT_OWNER_PRIVATE_KEY is not configured")
    return Account.from_key(secret.reveal())
