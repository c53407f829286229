"""What operators (and the policies acting for them) do on the operations floor, as plain
functions: resolve reconciliation flags, acknowledge what the chain sync flagged on a booking,
rebuild a booking from the chain, refund or ignore orphans, emergency-cancel a booking, complete
bookings whose service window passed, pause and unpause the contract.

Admin actions (reconciliation/admin.py), Celery tasks (reconciliation/tasks.py) and management
commands call these. Actors are audit labels ("staff:alice", "system:auto-complete"); every
staff action needs a reason, stored with it.

Errors: ActionRefused (bad input or state: the message says why), the TransactionError family
of reconciliation.transactions (the SentTransaction row records the outcome), RpcError.

Status changes reach bookings only through the chain sync (the transactions sent here change
bookings when their logs are scanned) or, for a rebuild, through its ingest
(reconciliation.chain_ingest).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from eth_account import Account

from chain_events.models import Orphan, OrphanStatus
from chain_events.rpc import RpcError, get_rpc_client
from common.audit import MAX_REASON_LENGTH
from common.singleflight import single_flight
from escrow import attention
from escrow.chain_effects import IMPLIED_CHAIN_STATUS
from escrow.chain_state import ChainStatus
from escrow.models import AttentionKind, Booking, BookingStatus

from .chain_ingest import rebuild_bookings_from_logs
from .chain_reads import confirmed_block, fetch_booking_logs, read_chain_bookings, read_contract_paused
from .models import (
    EmergencyPause,
    PauseAction,
    ReconciliationFlag,
    SentTransaction,
    TxPurpose,
    TxStatus,
)
from .selectors import forget_contract_paused
from .transactions import TransactionError, TransactionRejected, escrow_call, send_transaction, wait_for_transaction

log = logging.getLogger(__name__)

AUTO_COMPLETE_ACTOR = "system:auto-complete"
ORPHAN_REFUND_ACTOR = "system:orphan-auto-refund"


class ActionRefused(Exception):
    """The action cannot be done (bad input, wrong state); the message says why."""


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ActionRefused("a reason is required")
    if len(reason) > MAX_REASON_LENGTH:
        raise ActionRefused(f"the reason must be at most {MAX_REASON_LENGTH} characters")
    return reason


# -- flags and attention ---------------------------------------------------------------------------
def resolve_flag(flag: ReconciliationFlag, *, actor: str, note: str) -> ReconciliationFlag:
    note = _require_reason(note)
    with transaction.atomic():
        # The booking first, its flag after: the order of every writer of both (the reconcile
        # run's flags, the chain sync, rebuild_booking_from_chain).
        booking = Booking.objects.select_for_update().get(pk=flag.booking_id)
        flag = ReconciliationFlag.objects.select_for_update().get(pk=flag.pk)
        if flag.resolved_at is not None:
            raise ActionRefused("this flag is already resolved")
        flag.resolved_at, flag.resolved_by, flag.resolution_note = timezone.now(), actor[:200], note
        flag.save(update_fields=["resolved_at", "resolved_by", "resolution_note"])
        # The booking leaves the attention list once nothing else keeps it there: this flag's
        # item closes; other items (another open flag, a payment mismatch) keep it flagged.
        attention.withdraw_attention(booking, AttentionKind.RECONCILIATION, flag.detail, by=actor,
                                     why=f"flag resolved: {note}", now=flag.resolved_at)
    return flag


def acknowledge_attention(booking: Booking, *, actor: str, reason: str, now: datetime | None = None) -> Booking:
    """Staff checked what the chain sync flagged on a booking (a payment that differs from the
    booking, an event sequence the contract cannot produce) and accept it: the booking leaves
    the attention list, so auto-complete takes it again when its window passes. Without this,
    such a booking could only be refunded. Each item stays, marked with who, when and why; a
    new reason (e.g. another payment after a reorg) raises the flag again. Items of open
    reconciliation flags are left to resolve_flag."""
    reason = _require_reason(reason)
    now = now or timezone.now()
    with transaction.atomic():
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        try:
            attention.acknowledge_chain_items(booking, by=actor, why=reason, now=now)
        except attention.NothingToAcknowledge as exc:
            raise ActionRefused(str(exc)) from exc
    log.info("booking %s: attention acknowledged by %s: %s", booking.uuid, actor, reason)
    return booking


def rebuild_booking_from_chain(booking: Booking, *, actor: str, reason: str) -> Booking:
    """The way out for a booking the database has ahead of the chain (flag DATABASE_AHEAD:
    a status set by hand, a stored event whose block left the chain unnoticed), which
    reconciliation only flags, never rewrites from a guess: staff decide, and the chain's
    state at the confirmed head is applied.

    The booking's events are fetched from the chain and its store made to match them
    (the chain sync's rebuild: missing rows stored, rows whose block left the chain marked
    REMOVED), then the booking is re-derived from them. If its status then does not imply
    the status the contract's getBooking gives (the node's answers disagree: logs left out),
    nothing is changed and the action is refused; the check is on the status only. Its open
    reconciliation flags are resolved with the reason.
    """
    reason = _require_reason(reason)
    client = get_rpc_client()
    block = confirmed_block(client)
    chain_booking_id = booking.chain_booking_id
    chain = read_chain_bookings([chain_booking_id], block=block, client=client)[chain_booking_id]
    raw_logs = fetch_booking_logs([chain_booking_id], to_block=block, client=client)
    with transaction.atomic():
        before = Booking.objects.get(pk=booking.pk).status
        rebuild_bookings_from_logs([chain_booking_id], raw_logs, to_block=block, client=client, actor=actor)
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


# -- sending, one at a time ---------------------------------------------------------------------------
@contextmanager
def _one_at_a_time(name: str):
    """Two staff clicks or two workers never send the same refund/completion twice: the send runs
    under the single-flight lock `name`, and is refused while someone else holds it."""
    with single_flight(name) as acquired:
        if not acquired:
            raise ActionRefused("the same action is already in progress")
        yield


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
    with _one_at_a_time(f"reconciliation:orphan-refund:{orphan.pk}"):
        orphan = Orphan.objects.get(pk=orphan.pk)
        if orphan.status not in (OrphanStatus.OPEN, OrphanStatus.IGNORED):
            raise ActionRefused(f"the orphan is {orphan.status}, not OPEN or IGNORED")
        if orphan.chain_status != ChainStatus.PAID:
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
    with _one_at_a_time(f"reconciliation:booking-tx:{booking.pk}"):
        booking = Booking.objects.get(pk=booking.pk)
        on_chain = read_chain_bookings([booking.chain_booking_id])[booking.chain_booking_id].status
        if on_chain != ChainStatus.PAID:
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
    with _one_at_a_time(f"reconciliation:booking-tx:{booking.pk}"):
        booking = Booking.objects.get(pk=booking.pk)
        if booking.status != BookingStatus.PAID:
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
        Booking.objects.filter(status=BookingStatus.PAID, scheduled_at__lte=window_end, needs_attention=False)
        .filter(~Exists(open_flag), ~Exists(sent))
        .order_by("scheduled_at")
    )


def auto_complete_bookings(*, now: datetime | None = None) -> dict:
    """Send completeServiceByOperator for every due booking (all sent first, then awaited, so a
    batch costs about one block). The bookings become COMPLETED when the scanner sees the logs."""
    now = now or timezone.now()
    counts = {"sent": 0, "completed_on_chain": 0, "not_ready": 0, "failed": 0, "paused": False}
    if read_contract_paused():
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
        forget_contract_paused()
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
    secret = getattr(settings, "CONTRACT_OWNER_PRIVATE_KEY", None)
    if secret is None:
        raise ActionRefused("unpause is owner-only on chain and CONTRACT_OWNER_PRIVATE_KEY is not configured")
    return Account.from_key(secret.reveal())
