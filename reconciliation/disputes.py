"""Disputes: the legitimate way for a customer to contest a paid booking before it is paid out.

- `open_dispute` (the API, the booking's customer): while the booking awaits its payout (PAID,
  or a cancellation that lapsed unused) and nothing was sent to pay it out. The booking leaves
  auto-complete (reconciliation.operations excludes disputed bookings) and the dispute waits in
  the console (`unsettled_disputes`, the console index). One dispute per booking.
- `check_resolution` / `resolve_dispute` (the console, an operator): any split of the amount
  that sums to it to the base unit (the inviter part only with an inviter), sent from the
  operator account with the contract's `resolveDispute`, which emits the usual
  BookingCancelled: the chain sync applies it as a cancellation with that split (fees, nonces
  and all). The decision is recorded before the send; a send that failed can be decided again.
- `dispute_outcome`: what the customer and the provider see: pending, resolved (the booking
  was cancelled by the resolution), cancelled (by other means: a party's cancellation
  authorization, an emergency refund) or completed.

Errors: escrow's InvalidInput / BookingConflict for the API (400 / 409); ActionRefused of
reconciliation.operations for the console; the TransactionError family; RpcError.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from common.audit import MAX_REASON_LENGTH
from common.eth import usdc
from escrow.chain_state import ChainStatus
from escrow.errors import BookingConflict, InvalidInput
from escrow.models import Booking, BookingStatus
from escrow.money import CancellationSplit

from .chain_reads import read_chain_bookings
from .models import Dispute, DisputeStatus, SentTransaction, TxPurpose
from .operations import (
    ActionRefused,
    _already_sent,
    _booking_id_bytes,
    _one_at_a_time,
    _require_reason,
    check_operator_completion,
)
from .transactions import escrow_call, send_transaction

MAX_EVIDENCE_LENGTH = 4000
MAX_EVIDENCE_LINKS = 10
MAX_LINK_LENGTH = 500
# Printable ASCII only (no spaces, no control characters): a link is shown to staff as text.
LINK_PATTERN = re.compile(r"https?://[!-~]+")
# What a dispute came to, as the parties see it (dispute_outcome).
DISPUTE_OUTCOMES = ("pending", "resolved", "cancelled", "completed")
_SENDS = [TxPurpose.EMERGENCY_CANCEL, TxPurpose.OPERATOR_COMPLETE, TxPurpose.DISPUTE_RESOLUTION]


def _send_lock(booking: Booking):
    """The lock every operator transaction for `booking` is sent under (reconciliation.operations):
    a dispute opens under it too, so no payout can be sent while it opens."""
    return _one_at_a_time(f"reconciliation:booking-tx:{booking.pk}")


# -- the customer opens one -----------------------------------------------------------------------
def _clean_text(field: str, value: str, *, limit: int, required: bool) -> str:
    value = (value or "").strip()
    if required and not value:
        raise InvalidInput(field, "must not be blank")
    if len(value) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters")
    return value


def _clean_links(links: Sequence[str]) -> list[str]:
    if len(links) > MAX_EVIDENCE_LINKS:
        raise InvalidInput("links", f"at most {MAX_EVIDENCE_LINKS} links")
    for link in links:
        if len(link) > MAX_LINK_LENGTH or not LINK_PATTERN.fullmatch(link):
            raise InvalidInput("links", f"each link must be an http(s) URL of at most {MAX_LINK_LENGTH} printable "
                                        "ASCII characters")
    return list(links)


def open_dispute(
    booking: Booking, *, opened_by: str, reason: str, evidence: str = "", links: Sequence[str] = (),
    now: datetime | None = None,
) -> Dispute:
    """The customer (`opened_by`, checked by the caller) contests `booking` before its payout.

    Refused (BookingConflict, 409) when a dispute was opened already, when the booking does not
    await its payout (not PAID; or a cancellation authorization that can still be executed: the
    customer asked to cancel, and may dispute once that lapses), or when a completion, refund or
    resolution was already sent."""
    reason = _clean_text("reason", reason, limit=MAX_REASON_LENGTH, required=True)
    evidence = _clean_text("evidence", evidence, limit=MAX_EVIDENCE_LENGTH, required=False)
    links = _clean_links(links)
    try:
        with _send_lock(booking), transaction.atomic():
            booking = Booking.objects.select_for_update().get(pk=booking.pk)
            existing = Dispute.objects.filter(booking=booking).first()
            if existing is not None:
                raise BookingConflict(f"A dispute was already opened on this booking, at "
                                      f"{existing.opened_at.isoformat()}.", booking=booking)
            try:
                check_operator_completion(booking, now=now)
            except ActionRefused as exc:
                raise BookingConflict(f"This booking cannot be disputed: {exc}.", booking=booking) from None
            return Dispute.objects.create(
                booking=booking, opened_by=opened_by, reason=reason, evidence=evidence, links=links,
            )
    except ActionRefused:  # the lock: an operator transaction for this booking is being sent
        raise BookingConflict("A payout of this booking is being sent right now: try again in a minute.",
                              booking=booking) from None
    except IntegrityError:  # a second request raced the first past the check
        raise BookingConflict("A dispute was already opened on this booking.", booking=booking) from None


# -- an operator resolves it ----------------------------------------------------------------------
def check_split(split: CancellationSplit, *, amount: int, has_inviter: bool) -> None:
    """ActionRefused unless the four parts are whole base units, none negative, summing to `amount`
    exactly, with no inviter part when the booking has no inviter (what the contract checks)."""
    parts = (split.customer, split.provider, split.platform, split.inviter)
    if any(isinstance(part, bool) or not isinstance(part, int) or part < 0 for part in parts):
        raise ActionRefused("each part must be a whole number of base units, not negative")
    if split.total != amount:
        raise ActionRefused(f"the parts sum to {usdc(split.total)} ({split.total} base units), not to the booking's "
                            f"amount, {usdc(amount)} ({amount} base units)")
    if split.inviter and not has_inviter:
        raise ActionRefused("the booking has no inviter: the inviter part must be 0")


def check_resolution(dispute: Dispute, split: CancellationSplit) -> None:
    """ActionRefused unless `split` can be sent for `dispute` now: the booking's money is escrowed
    on chain (one eth_call; the contract's amount and inviter are what the split must match) and
    no refund, completion or resolution is going out or went out for it. The console asks before
    it queues a resolution; resolve_dispute asks again under its lock."""
    booking = dispute.booking
    on_chain = read_chain_bookings([booking.chain_booking_id])[booking.chain_booking_id]
    if on_chain.status != ChainStatus.PAID:
        raise ActionRefused(f"nothing to pay out: the chain shows {on_chain.status} for this booking "
                            f"(the database says {booking.status})")
    check_split(split, amount=on_chain.amount, has_inviter=int(on_chain.inviter, 16) != 0)
    previous = _already_sent(booking=booking, purpose__in=_SENDS)
    if previous is not None:
        raise ActionRefused(f"a {previous.purpose} transaction was already sent ({previous.status})")


def resolve_dispute(
    dispute: Dispute, *, split: CancellationSplit, actor: str, reason: str, wait: bool = True,
) -> SentTransaction:
    """Record the operator's decision and send resolveDispute with it (the worker does this for
    the console). The reason stays here, shown to the parties; the chain gets only the
    dispute's number (its logs are public). The booking becomes CANCELLED with the split when
    the BookingCancelled log is processed."""
    reason = _require_reason(reason)
    with _send_lock(dispute.booking):
        dispute = Dispute.objects.select_related("booking").get(pk=dispute.pk)
        check_resolution(dispute, split)
        dispute.status = DisputeStatus.DECIDED
        dispute.customer_amount, dispute.provider_amount = split.customer, split.provider
        dispute.platform_amount, dispute.inviter_amount = split.platform, split.inviter
        dispute.decided_by, dispute.decided_at, dispute.decision_reason = actor[:200], timezone.now(), reason
        dispute.save()
        booking = dispute.booking
        return send_transaction(
            purpose=TxPurpose.DISPUTE_RESOLUTION,
            data=escrow_call("resolveDispute", _booking_id_bytes(booking.chain_booking_id), split.customer,
                             split.provider, split.platform, split.inviter, f"dispute #{dispute.pk} resolved"),
            actor=actor, reason=reason, booking=booking, wait=wait,
        )


# -- reads --------------------------------------------------------------------------------------------
def decided_split(dispute: Dispute) -> CancellationSplit | None:
    if dispute.decided_at is None:
        return None
    return CancellationSplit(customer=int(dispute.customer_amount), provider=int(dispute.provider_amount),
                             platform=int(dispute.platform_amount), inviter=int(dispute.inviter_amount))


def latest_resolution(dispute: Dispute) -> SentTransaction | None:
    """The newest resolveDispute transaction sent for the dispute's booking."""
    return SentTransaction.objects.filter(booking_id=dispute.booking_id, purpose=TxPurpose.DISPUTE_RESOLUTION).first()


def dispute_outcome(dispute: Dispute) -> str:
    """One of DISPUTE_OUTCOMES, from the booking as the chain sync left it."""
    booking = dispute.booking
    if booking.status == BookingStatus.COMPLETED:
        return "completed"
    if booking.status != BookingStatus.CANCELLED:
        return "pending"
    tx_hash = booking.cancellation_tx_hash
    by_resolution = SentTransaction.objects.filter(
        Q(tx_hash=tx_hash) | Q(tx_hashes__contains=[tx_hash]),
        booking_id=booking.pk, purpose=TxPurpose.DISPUTE_RESOLUTION,
    ).exists()
    return "resolved" if tx_hash and by_resolution else "cancelled"


def unsettled_disputes() -> QuerySet[Dispute]:
    """Disputes whose booking still holds its money as far as the database knows: waiting for an
    operator's decision, or for its transaction to reach the chain (the console's list)."""
    return Dispute.objects.exclude(booking__status__in=[BookingStatus.COMPLETED, BookingStatus.CANCELLED])
