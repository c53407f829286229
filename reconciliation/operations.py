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
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from eth_account import Account

from chain_events.models import Orphan, OrphanStatus
from chain_events.rpc import RpcError, get_rpc_client
from common.audit import MAX_REASON_LENGTH
from common.singleflight import single_flight
from escrow import attention
from escrow.chain_effects import IMPLIED_CHAIN_STATUS
from escrow.chain_state import ChainStatus
from escrow.models import AttentionKind, Booking, BookingStatus, SignatureKind, SignatureNonce

from .chain_ingest import rebuild_bookings_from_logs
from .chain_reads import confirmed_block, fetch_booking_logs, read_chain_bookings, read_contract_paused
from .models import (
    Dispute,
    EmergencyPause,
    PauseAction,
    ReconciliationFlag,
    SentTransaction,
    TxPurpose,
    TxStatus,
)
from .selectors import forget_contract_paused
from .transactions import TransactionError, TransactionRejected, escrow_call, send_transaction

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
    """The latest transaction of these filters that is going out or went out. A MINED one whose
    block later left the chain stops counting once the settle job re-checked it (sent again:
    SUBMITTED, which still counts; given up: FAILED)."""
    return SentTransaction.objects.filter(
        status__in=[TxStatus.PREPARING, TxStatus.SUBMITTED, TxStatus.MINED], **filters
    ).order_by("-created_at").first()


def _booking_id_bytes(chain_booking_id: str) -> bytes:
    return bytes.fromhex(chain_booking_id[2:])


# -- orphans ----------------------------------------------------------------------------------------
def check_orphan_refund(orphan: Orphan) -> None:
    """ActionRefused unless the orphan can be refunded now: OPEN or IGNORED, still escrowed on
    chain, no refund sent yet. The console asks before it queues a refund for the worker;
    refund_orphan asks again under its lock."""
    if orphan.status not in (OrphanStatus.OPEN, OrphanStatus.IGNORED):
        raise ActionRefused(f"the orphan is {orphan.status}, not OPEN or IGNORED")
    if orphan.chain_status != ChainStatus.PAID:
        raise ActionRefused(f"nothing to refund: the chain shows {orphan.chain_status}")
    previous = _already_sent(orphan=orphan, purpose=TxPurpose.EMERGENCY_CANCEL)
    if previous is not None:
        raise ActionRefused(f"a refund was already sent ({previous.status}, tx {previous.tx_hash or 'pending'})")


def refund_orphan(orphan: Orphan, *, actor: str, reason: str, wait: bool = True) -> SentTransaction:
    """Refund an orphan's payment in full to its customer with emergencyCancelBooking (operator).
    Staff's refund waits for the receipt; the periodic policy refund (`wait=False`) does not.

    The orphan becomes RESOLVED when its BookingCancelled log is processed (scanner / handlers,
    resolved_by "chain"); this records who asked and why in its note and on the transaction.
    An IGNORED orphan whose money is still escrowed can be refunded too (staff changed their
    mind, or new facts came in): it is reopened first, with who and why in its note, so the
    money never stays in the escrow for want of a way out.
    """
    reason = _require_reason(reason)
    with _one_at_a_time(f"reconciliation:orphan-refund:{orphan.pk}"):
        orphan = Orphan.objects.get(pk=orphan.pk)
        check_orphan_refund(orphan)
        if orphan.status == OrphanStatus.IGNORED:
            changed = orphan.move_to(OrphanStatus.OPEN, f"reopened by {actor} to refund it: {reason}")
            orphan.save(update_fields=[*changed, "updated_at"])
        record = send_transaction(
            purpose=TxPurpose.EMERGENCY_CANCEL,
            data=escrow_call("emergencyCancelBooking", _booking_id_bytes(orphan.chain_booking_id), reason),
            actor=actor, reason=reason, orphan=orphan, wait=wait,
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
    than ORPHAN_REFUND_GRACE_SECONDS are refunded (one failure does not stop the others). Sent,
    not waited for: the run holds its lock, and the settle job records the outcomes."""
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
            refund_orphan(orphan, actor=ORPHAN_REFUND_ACTOR, wait=False,
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
def check_emergency_cancel(booking: Booking) -> None:
    """ActionRefused unless the booking's money is escrowed on chain now (one eth_call; the
    contract's state decides, not the booking's status) and no refund or completion was sent
    for it. The console asks before it queues a refund for the worker; emergency_cancel_booking
    asks again under its lock."""
    on_chain = read_chain_bookings([booking.chain_booking_id])[booking.chain_booking_id].status
    if on_chain != ChainStatus.PAID:
        raise ActionRefused(
            f"nothing to refund: the chain shows {on_chain} for this booking (the database says {booking.status})"
        )
    previous = _already_sent(booking=booking, purpose__in=[TxPurpose.EMERGENCY_CANCEL, TxPurpose.OPERATOR_COMPLETE])
    if previous is not None:
        raise ActionRefused(f"a {previous.purpose} transaction was already sent ({previous.status})")


def emergency_cancel_booking(booking: Booking, *, actor: str, reason: str) -> SentTransaction:
    """Full refund of a paid booking to its customer (emergencyCancelBooking; works while paused).
    The booking becomes CANCELLED when the BookingCancelled log is processed.

    What decides is the contract's state, read now, not the booking's status: money escrowed on
    chain must have a way out even when the database disagrees (a payment event that could not
    be applied, a booking expired meanwhile)."""
    reason = _require_reason(reason)
    with _one_at_a_time(f"reconciliation:booking-tx:{booking.pk}"):
        booking = Booking.objects.get(pk=booking.pk)
        check_emergency_cancel(booking)
        return send_transaction(
            purpose=TxPurpose.EMERGENCY_CANCEL,
            data=escrow_call("emergencyCancelBooking", _booking_id_bytes(booking.chain_booking_id), reason),
            actor=actor, reason=reason, booking=booking,
        )


def _live_cancellation_authorizations(now: datetime) -> QuerySet[SignatureNonce]:
    """Cancellation authorizations a wallet may still execute: live until the grace after their
    expiry (the chain's clock may trail ours), as for escrow's lapse job."""
    cutoff = now - timedelta(seconds=settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS)
    return SignatureNonce.objects.filter(kind=SignatureKind.CANCELLATION, expires_at__gt=cutoff)


def _awaiting_payout(now: datetime) -> Q:
    """Bookings whose escrowed money waits only for its payout: PAID, or PENDING_CANCELLATION
    whose cancellation lapsed unused (the lapse job has not put it back to PAID yet). Without the
    latter a customer could ask again each time the last request lapsed and keep the provider's
    payout waiting for ever (escrow caps the requests, MAX_CANCELLATION_REQUESTS_PER_BOOKING).
    Never a disputed booking: an operator decides its split (reconciliation.disputes)."""
    lapsed = Q(status=BookingStatus.PENDING_CANCELLATION) & ~Exists(
        _live_cancellation_authorizations(now).filter(booking=OuterRef("pk"))
    )
    return (Q(status=BookingStatus.PAID) | lapsed) & ~Exists(Dispute.objects.filter(booking=OuterRef("pk")))


def check_operator_completion(booking: Booking, *, now: datetime | None = None) -> None:
    """ActionRefused unless completeServiceByOperator may be sent for the booking now: PAID, or a
    cancellation that lapsed unused; not disputed; no completion, refund or dispute resolution sent.
    The console asks before it queues a completion; complete_booking_by_operator asks again under
    its lock. The contract still checks paidAt + its delay."""
    now = now or timezone.now()
    if booking.status == BookingStatus.PENDING_CANCELLATION:
        live = _live_cancellation_authorizations(now).filter(booking=booking).order_by("-expires_at").first()
        if live is not None:
            until = live.expires_at + timedelta(seconds=settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS)
            raise ActionRefused(f"a cancellation authorization can still be executed until {until:%Y-%m-%d %H:%M:%S} "
                                "UTC (its expiry and the grace): try again after it")
    elif booking.status != BookingStatus.PAID:
        raise ActionRefused(f"the booking is {booking.status}, not PAID")
    dispute = Dispute.objects.filter(booking=booking).first()
    if dispute is not None:
        raise ActionRefused(f"the booking is disputed ({dispute}): resolve the dispute with a split instead")
    previous = _already_sent(booking=booking, purpose__in=[
        TxPurpose.EMERGENCY_CANCEL, TxPurpose.OPERATOR_COMPLETE, TxPurpose.DISPUTE_RESOLUTION])
    if previous is not None:
        raise ActionRefused(f"a {previous.purpose} transaction was already sent ({previous.status})")


def complete_booking_by_operator(booking: Booking, *, actor: str, reason: str, wait: bool = True) -> SentTransaction:
    """completeServiceByOperator for one booking that awaits its payout (check_operator_completion);
    auto-complete's, and the console's "complete for the provider"."""
    reason = _require_reason(reason)
    with _one_at_a_time(f"reconciliation:booking-tx:{booking.pk}"):
        booking = Booking.objects.get(pk=booking.pk)
        check_operator_completion(booking)
        return send_transaction(
            purpose=TxPurpose.OPERATOR_COMPLETE,
            data=escrow_call("completeServiceByOperator", _booking_id_bytes(booking.chain_booking_id)),
            actor=actor, reason=reason, booking=booking, wait=wait,
        )


def auto_complete_candidates(now: datetime):
    """Bookings awaiting their payout (PAID, or a cancellation that lapsed unused; not disputed)
    whose service window passed: no open reconciliation flag, not needing attention, no
    completion/refund already sent. A live cancellation authorization keeps its booking out."""
    window_end = now - timedelta(seconds=settings.AUTO_COMPLETE_AFTER_SECONDS)
    open_flag = ReconciliationFlag.objects.filter(booking=OuterRef("pk"), resolved_at__isnull=True)
    sent = SentTransaction.objects.filter(
        booking=OuterRef("pk"), purpose__in=[TxPurpose.OPERATOR_COMPLETE, TxPurpose.EMERGENCY_CANCEL],
        status__in=[TxStatus.PREPARING, TxStatus.SUBMITTED, TxStatus.MINED],
    )
    return (
        Booking.objects.filter(_awaiting_payout(now), scheduled_at__lte=window_end, needs_attention=False)
        .filter(~Exists(open_flag), ~Exists(sent))
        .order_by("scheduled_at")
    )


def auto_complete_bookings(*, now: datetime | None = None) -> dict:
    """Send completeServiceByOperator for every due booking, and return: nothing here waits for
    a receipt. The run holds the auto-complete lock, and runs waiting on receipts kept the next
    ones out (issue 17: 96 of 110 skipped). The settle job records each transaction's outcome
    (and replaces or re-sends it if needed); the bookings become COMPLETED when the scanner sees
    the logs."""
    now = now or timezone.now()
    counts = {"sent": 0, "not_ready": 0, "failed": 0, "paused": False}
    if read_contract_paused():
        counts["paused"] = True  # completions revert while paused; refunds still work
        return counts
    for booking in auto_complete_candidates(now)[: settings.AUTO_COMPLETE_MAX_PER_RUN]:
        try:
            complete_booking_by_operator(
                booking, actor=AUTO_COMPLETE_ACTOR, wait=False,
                reason=f"service window passed ({settings.AUTO_COMPLETE_AFTER_SECONDS} s after the scheduled time)",
            )
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
