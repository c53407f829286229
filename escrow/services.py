"""Booking use cases as plain functions: the API, admin, Celery tasks and the shell all call these.

Errors: `InvalidInput` (a bad value, names the field), `BookingConflict` and
`escrow.state.IllegalTransition` (the booking's state does not allow it), `NotPermitted`
(the caller's role does not allow it). Status changes always go through `escrow.state.transition`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from common.audit import MAX_REASON_LENGTH, staff_actor

from . import referrals, wallet_locks
from .addresses import contract_of_ours, normalize_address
from .authentication import is_staff_user, is_wallet
from .cancellation import CUSTOMER, PROVIDER, CancellationTerms, cancellation_terms
from .errors import BookingConflict, InvalidInput, NotPermitted
from .fastpath import process_transaction
from .models import Booking, BookingStatus, BookingStatusChange, SignatureKind, SignatureNonce, StatusSource
from .money import AmountError, check_fee_rates, parse_amount
from .revert_reasons import RevertReason
from .signing import SignedAuthorization, sign_cancellation_authorization, sign_payment_authorization
from .state import record_creation, transition

log = logging.getLogger(__name__)

S = BookingStatus
STAFF = "staff"
MAX_DESCRIPTION_LENGTH = 500
TX_HASH_PATTERN = re.compile(r"0x[0-9a-fA-F]{64}")
# Who ran a job that is neither a person nor the chain (audit rows' actor).
SYSTEM_EXPIRY_ACTOR = "system:authorization-expiry"


# -- who is asking ------------------------------------------------------------------------
def actor_label(user) -> str:
    """How a caller appears in the audit trail (BookingStatusChange.actor)."""
    if is_wallet(user):
        return f"wallet:{user.address}"
    if user is not None and getattr(user, "is_authenticated", False):
        return staff_actor(user)
    return ""


def bookings_visible_to(user) -> QuerySet[Booking]:
    """Staff see every booking; a wallet sees those where it is the customer or the provider."""
    if is_staff_user(user):
        return Booking.objects.all()
    if is_wallet(user):
        return Booking.objects.filter(Q(customer_address=user.address) | Q(provider_address=user.address))
    return Booking.objects.none()


def role_of(booking: Booking, user) -> str | None:
    """customer / provider / staff, or None for anyone else."""
    if is_wallet(user):
        if user.address == booking.customer_address:
            return CUSTOMER
        if user.address == booking.provider_address:
            return PROVIDER
        return None
    return STAFF if is_staff_user(user) else None


def require_role(booking: Booking, user, allowed: set[str], action: str) -> str:
    role = role_of(booking, user)
    if role not in allowed:
        who = " or ".join(sorted(allowed))
        raise NotPermitted(f"Only the booking's {who} can {action}.")
    return role


# -- creating -----------------------------------------------------------------------------
def default_fee_rates(has_inviter: bool) -> tuple[int, int]:
    """(platform, inviter) basis points: DESIGN.md defaults, configurable in settings."""
    if has_inviter:
        return settings.DEFAULT_INVITED_PLATFORM_FEE_RATE, settings.DEFAULT_INVITER_FEE_RATE
    return settings.DEFAULT_PLATFORM_FEE_RATE, 0


def create_booking(
    *,
    customer: str,
    provider: str,
    amount: int | str,
    scheduled_at: datetime,
    description: str = "",
    source: str = StatusSource.API,
    actor: str = "",
    now: datetime | None = None,
) -> Booking:
    """Validate and create a PENDING_PAYMENT booking (with its first audit row).

    The inviter is the one the customer is bound to by a redeemed invite code (escrow.referrals),
    nobody else; rates are `default_fee_rates`. Refused with BookingConflict while the customer
    has MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET bookings waiting for payment, or the provider
    MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER.
    """
    now = now or timezone.now()
    customer = normalize_address(customer, field="customer")
    provider = normalize_address(provider, field="provider")
    if provider == customer:
        raise InvalidInput("provider", "must be a different address from the customer")
    contract = contract_of_ours(provider)
    if contract is not None:
        raise InvalidInput("provider", f"is {contract}: a payout there could never leave the escrow")
    try:
        amount = parse_amount(amount)
    except AmountError as exc:
        raise InvalidInput("amount", str(exc)) from None
    if not isinstance(scheduled_at, datetime) or timezone.is_naive(scheduled_at):
        raise InvalidInput("scheduled_at", "must be a date-time with a time zone")
    if scheduled_at <= now:
        raise InvalidInput("scheduled_at", "must be in the future")
    if scheduled_at > now + timedelta(days=settings.BOOKING_MAX_DAYS_AHEAD):
        raise InvalidInput("scheduled_at", f"must be at most {settings.BOOKING_MAX_DAYS_AHEAD} days ahead")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput("description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    with transaction.atomic():
        _lock_and_check_unpaid_caps(customer, provider)
        inviter = referrals.inviter_for_booking(customer, provider)
        platform_fee_rate, inviter_fee_rate = default_fee_rates(bool(inviter))
        check_fee_rates(platform_fee_rate, inviter_fee_rate, has_inviter=bool(inviter))
        booking = Booking.objects.create(
            customer_address=customer,
            provider_address=provider,
            inviter_address=inviter,
            amount=amount,
            platform_fee_rate=platform_fee_rate,
            inviter_fee_rate=inviter_fee_rate,
            scheduled_at=scheduled_at,
            description=description,
        )
        record_creation(booking, source=source, actor=actor)
    return booking


def _lock_and_check_unpaid_caps(customer: str, provider: str) -> None:
    """BookingConflict when one more booking waiting for payment would put `customer` or
    `provider` over its cap. Unpaid bookings cost nothing to make and each is a row every
    reconciliation run reads on chain and a line in the provider's list; they expire after
    UNPAID_BOOKING_TTL_SECONDS (expire_unused_authorizations). Holds the two wallets' locks
    until the transaction ends, so concurrent bookings cannot both take the last place."""
    wallet_locks.lock_until_commit(wallet_locks.as_customer(customer), wallet_locks.as_provider(provider))
    unpaid = Booking.objects.filter(status=S.PENDING_PAYMENT)
    cap = settings.MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET
    if unpaid.filter(customer_address=customer)[:cap].count() >= cap:
        raise BookingConflict(
            f"This wallet already has {cap} unpaid booking{'s' * (cap != 1)}, the most a wallet may have: "
            "pay one, or let one expire, before booking again."
        )
    cap = settings.MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER
    if unpaid.filter(provider_address=provider)[:cap].count() >= cap:
        raise BookingConflict(
            f"This provider already has {cap} unpaid booking{'s' * (cap != 1)} waiting for payment, the most a "
            "provider may have: try again once one is paid or has expired."
        )


# -- authorizations -----------------------------------------------------------------------
def issue_payment_authorization(
    booking: Booking, *, actor: str = "", now: datetime | None = None,
) -> SignedAuthorization:
    """Sign a fresh BookingAuthorization (new nonce, new expiry; nothing earlier is re-served).

    Only while the booking awaits payment (PENDING_PAYMENT, or EXPIRED which goes back to
    PENDING_PAYMENT) and its scheduled time is still ahead; otherwise BookingConflict.
    Several live payment authorizations for one booking are harmless: the contract accepts
    one payment per booking id (BookingAlreadyExists).
    """
    now = now or timezone.now()
    if booking.status not in (S.PENDING_PAYMENT, S.EXPIRED):
        raise BookingConflict(
            f"The booking is {booking.status}; payment can only be authorized while it is PENDING_PAYMENT.",
            booking=booking,
        )
    if booking.scheduled_at <= now:
        raise BookingConflict("The booking's scheduled time has passed; it can no longer be paid.", booking=booking)
    if booking.status == S.EXPIRED:
        with transaction.atomic():
            # Back to waiting for payment: it counts against the caps again, like a new booking.
            _lock_and_check_unpaid_caps(booking.customer_address, booking.provider_address)
            locked = Booking.objects.select_for_update().get(pk=booking.pk)
            transition(locked, S.PENDING_PAYMENT, source=StatusSource.API, actor=actor, note="payment authorized again")
        booking = locked
    return sign_payment_authorization(booking, now=now)


def request_cancellation(
    booking: Booking, *, requested_by: str, reason: str, actor: str = "", now: datetime | None = None
) -> tuple[SignedAuthorization, CancellationTerms]:
    """Move a paid booking to PENDING_CANCELLATION and sign the CancellationAuthorization that
    pays out the policy's split (escrow.cancellation). `requested_by` is "customer" or "provider".

    While an earlier cancellation authorization is still live, a new one is refused
    (BookingConflict): the first must expire before terms are signed again. Once the booking had
    MAX_CANCELLATION_REQUESTS_PER_BOOKING of them, whoever asks, none is signed any more
    (BookingConflict): each lapsed request kept the booking out of auto-complete for a while, and
    without a cap a customer could keep the provider's payout from ever being made. The status
    the booking had before is remembered in `status_before_cancellation`.
    """
    now = now or timezone.now()
    reason = reason.strip()
    if not reason:
        raise InvalidInput("reason", "must not be blank")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput("reason", f"must be at most {MAX_REASON_LENGTH} characters")
    with transaction.atomic():
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        if booking.status == S.PENDING_CANCELLATION:
            # Live until the grace after its expiry, as for the lapse job: the contract takes an
            # authorization while block.timestamp <= expiry, and the chain's clock may trail
            # ours. Two executable splits at once would let the wallet pick the better one.
            cutoff = now - timedelta(seconds=settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS)
            live = (
                booking.signatures.filter(
                    kind=SignatureKind.CANCELLATION, expires_at__gt=cutoff, consumed_at__isnull=True,
                )
                .order_by("-expires_at")
                .first()
            )
            if live is not None:
                raise BookingConflict(
                    f"A cancellation authorization is already outstanding until {live.expires_at.isoformat()}.",
                    booking=booking,
                )
        signed_before = booking.signatures.filter(kind=SignatureKind.CANCELLATION).count()
        cap = settings.MAX_CANCELLATION_REQUESTS_PER_BOOKING
        if signed_before >= cap:
            raise BookingConflict(
                f"This booking already had {signed_before} cancellation authorization{'s' * (signed_before != 1)}, "
                f"the most one booking may have (MAX_CANCELLATION_REQUESTS_PER_BOOKING = {cap}): no more are "
                "signed. Ask support to cancel it.",
                booking=booking,
            )
        if booking.status == S.PENDING_CANCELLATION:
            booking.cancellation_reason = reason
            booking.save(update_fields=["cancellation_reason", "updated_at"])
        else:
            previous_status = booking.status
            booking.status_before_cancellation = previous_status
            booking.cancellation_reason = reason
            # Raises IllegalTransition unless the booking is PAID or PENDING_COMPLETION.
            transition(
                booking,
                S.PENDING_CANCELLATION,
                source=StatusSource.API,
                actor=actor,
                note=f"cancellation requested by the {requested_by}",
                update_fields=("status_before_cancellation", "cancellation_reason"),
            )
        terms = cancellation_terms(booking, requested_by=requested_by, now=now)
        signed = sign_cancellation_authorization(booking, terms.split, reason, now=now)
    return signed, terms


# -- transactions the client reports ------------------------------------------------------
SUBMISSION_STATUSES = ("unknown", "pending", "reverted", "mined")


@dataclass(frozen=True)
class TransactionSubmission:
    # unknown: the node has never seen it; pending: in its mempool, or mined below the
    # confirmation depth; reverted: mined and reverted; mined: applied.
    status: str
    tx_hash: str
    block_number: int | None = None
    events: tuple[str, ...] = ()
    booking_status: str | None = None  # the booking's status after the submission was handled
    reason: dict | None = None  # reverted: the contract's error (escrow.revert_reasons.RevertReason.as_dict)
    retry_after_seconds: int | None = None  # unknown/pending: when to ask again
    hint: str = ""  # unknown/pending: what to do meanwhile, in a sentence


def normalize_tx_hash(tx_hash) -> str:
    if not isinstance(tx_hash, str) or not TX_HASH_PATTERN.fullmatch(tx_hash):
        raise InvalidInput("tx_hash", "must be 0x followed by 64 hex digits")
    return tx_hash.lower()


def polling_advice(status: str) -> tuple[int, str]:
    """(seconds to wait before asking again, what to do) for a transaction not mined (`unknown`,
    `pending`), or mined below the confirmation depth (`pending`)."""
    wait = settings.TX_CLIENT_POLL_SECONDS
    if status == "unknown":
        return wait, (
            f"The chain node has not seen this transaction. If it was just sent, ask again in {wait} s; "
            f"if it is still unknown {settings.TX_CLIENT_RESUBMIT_AFTER_SECONDS} s after it was sent, it was "
            "dropped or sent to another network: send it again."
        )
    return wait, f"Not mined (or not confirmed) yet: ask again in {wait} s."


def submit_transaction(booking: Booking, tx_hash: str, actor: str = "") -> TransactionSubmission:
    """A client reports the transaction it sent for `booking`, so we need not wait for the scanner.

      1. fetches the receipt at once (escrow.fastpath); not mined yet → status "pending" if the
         node holds it in its mempool, "unknown" if it has never seen it (both with polling advice);
      2. refuses (InvalidInput on tx_hash) a transaction that neither called the escrow
         contract nor emitted an escrow log; a reverted call → status "reverted" with the
         contract's decoded error, recorded on this booking's history (no status change) when
         the call named this booking; one that named another booking is refused;
      3. refuses a mined transaction with no escrow event for this booking's id;
      4. stores the receipt's escrow events and applies them through the chain indexer's ingest,
         the same path as the scanner (idempotent with it), and answers with the booking's status after.

    Mined but not yet CHAIN_CONFIRMATIONS deep → "pending" (the scanner applies it later).
    Mined in a block that is not the chain's → escrow.fastpath.ReceiptNotCanonical (409), nothing stored.
    RPC failures propagate as chain_events.rpc.RpcError (the API answers 503).
    """
    tx_hash = normalize_tx_hash(tx_hash)
    outcome = process_transaction(tx_hash, actor=actor or "")
    if not outcome.mined:
        state = "pending" if outcome.in_mempool else "unknown"
        wait, hint = polling_advice(state)
        return TransactionSubmission(
            status=state, tx_hash=tx_hash, booking_status=booking.status, retry_after_seconds=wait, hint=hint
        )
    if not outcome.touched_escrow:
        raise InvalidInput("tx_hash", "the transaction did not touch the escrow contract")
    if outcome.reverted:
        reason = outcome.revert_reason or RevertReason(error=None)
        if reason.chain_booking_id not in (None, booking.chain_booking_id):
            raise InvalidInput("tx_hash", "the reverted transaction is a call for another booking")
        if reason.chain_booking_id == booking.chain_booking_id:
            booking = record_reverted_transaction(booking, tx_hash, reason, actor=actor)
        return TransactionSubmission(
            status="reverted", tx_hash=tx_hash, block_number=outcome.block_number, booking_status=booking.status,
            reason=reason.as_dict(),
        )
    events = tuple(e.event_name for e in outcome.events if e.chain_booking_id == booking.chain_booking_id)
    if not events:
        raise InvalidInput("tx_hash", "the transaction has no escrow event for this booking")
    booking.refresh_from_db()
    log.info("booking %s: %s reported tx %s (%s)", booking.uuid, actor or "someone", tx_hash, ", ".join(events))
    if outcome.awaiting_confirmations:
        wait, hint = polling_advice("pending")
        return TransactionSubmission(
            status="pending", tx_hash=tx_hash, block_number=outcome.block_number, events=events,
            booking_status=booking.status, retry_after_seconds=wait, hint=hint,
        )
    return TransactionSubmission(
        status="mined",
        tx_hash=tx_hash,
        block_number=outcome.block_number,
        events=events,
        booking_status=booking.status,
    )


def record_reverted_transaction(booking: Booking, tx_hash: str, reason: RevertReason, *, actor: str = "") -> Booking:
    """Put why `tx_hash` reverted on the booking's history: a BookingStatusChange whose status
    stays what it is (a revert moves nothing), source chain, once per transaction."""
    with transaction.atomic():
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        if not booking.status_changes.filter(tx_hash=tx_hash).exists():
            BookingStatusChange.objects.create(
                booking=booking, from_status=booking.status, to_status=booking.status, source=StatusSource.CHAIN,
                actor=actor, tx_hash=tx_hash, note=f"transaction reverted: {reason.text}", moves_booking=False,
            )
            log.info("booking %s: tx %s reverted: %s", booking.uuid, tx_hash, reason.text)
    return booking


# -- housekeeping (for chain sync, reconciliation and beat) -------------------------------
def expire_unused_authorizations(*, now: datetime | None = None) -> dict[str, int]:
    """Put bookings whose signed authorizations all ran out back where they belong.

    * PENDING_PAYMENT → EXPIRED, unless a payment authorization is still live (until its expiry
      plus AUTHORIZATION_EXPIRY_GRACE_SECONDS): when it was authorized and every authorization
      expired, when its scheduled time passed unpaid, or when it has waited for payment
      UNPAID_BOOKING_TTL_SECONDS (a booking never authorized would otherwise count against the
      unpaid-booking caps until its scheduled time, up to BOOKING_MAX_DAYS_AHEAD away).
    * PENDING_CANCELLATION → status_before_cancellation (PAID if unknown) when every
      cancellation authorization expired (plus the grace).
    The chain still wins: a payment or cancellation mined before the expiry moves the booking
    on when the scanner sees it (chain-sourced transitions always apply).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS)
    counts = {"expired": 0, "cancellation_lapsed": 0}

    def live(kind):
        return SignatureNonce.objects.filter(booking=OuterRef("pk"), kind=kind, expires_at__gt=cutoff)

    waited_since = now - timedelta(seconds=settings.UNPAID_BOOKING_TTL_SECONDS)
    unpaid = Booking.objects.filter(status=S.PENDING_PAYMENT).filter(
        ~Exists(live(SignatureKind.PAYMENT)),
        Q(Exists(SignatureNonce.objects.filter(booking=OuterRef("pk"), kind=SignatureKind.PAYMENT)))
        | Q(scheduled_at__lte=now)
        | Q(status_changed_at__lte=waited_since),
    )
    for booking_id in unpaid.values_list("pk", flat=True):
        with transaction.atomic():
            booking = Booking.objects.select_for_update().get(pk=booking_id)
            still_live = booking.signatures.filter(kind=SignatureKind.PAYMENT, expires_at__gt=cutoff).exists()
            if booking.status == S.PENDING_PAYMENT and not still_live:
                authorized = booking.signatures.filter(kind=SignatureKind.PAYMENT).exists()
                note = ("no payment before the authorization expired" if authorized
                        else "unpaid, and no payment authorized in time")
                transition(booking, S.EXPIRED, source=StatusSource.API, actor=SYSTEM_EXPIRY_ACTOR, note=note)
                counts["expired"] += 1

    lapsed = Booking.objects.filter(status=S.PENDING_CANCELLATION).filter(~Exists(live(SignatureKind.CANCELLATION)))
    for booking_id in lapsed.values_list("pk", flat=True):
        with transaction.atomic():
            booking = Booking.objects.select_for_update().get(pk=booking_id)
            still_live = booking.signatures.filter(kind=SignatureKind.CANCELLATION, expires_at__gt=cutoff).exists()
            if booking.status == S.PENDING_CANCELLATION and not still_live:
                back_to = booking.status_before_cancellation or S.PAID
                booking.status_before_cancellation = ""
                transition(booking, back_to, source=StatusSource.API, actor=SYSTEM_EXPIRY_ACTOR,
                           note="cancellation authorization expired unused",
                           update_fields=("status_before_cancellation",))
                counts["cancellation_lapsed"] += 1
    return counts
