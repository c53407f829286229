"""What a wallet earned (as provider, as inviter) and what the platform took: the reads behind
`GET /api/earnings/` and the console's fee ledger export.

Sources of truth, all written by the chain sync (escrow.chain_effects) from the contract's events:
a booking's `chain_data` (ServiceCompleted's providerAmount and inviterFee, BookingCancelled's
providerAmount and inviterAmount), the PlatformFee rows (one per booking with a platform or inviter
part) and ProviderEarnings (a provider's completions). A booking counts once its chain state holds
the payout: a completion, or a cancellation that paid the party something. Sums run in SQL on
NUMERIC(78,0) (exact) and come back as int: base units, never floats.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date

from django.db.models import Case, Count, DecimalField, Q, QuerySet, Sum, Value, When
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncDate

from common.eth import format_amount

from .models import Booking, PlatformFee, ProviderEarnings

_UINT = DecimalField(max_digits=78, decimal_places=0)
_ZERO = Value(0, output_field=_UINT)


def _chain_arg(event: str, name: str):
    """A uint256 argument of the booking's completion or cancellation in chain_data (strings there)."""
    return Cast(KT(f"chain_data__{event}__{name}"), _UINT)


# The argument that pays each role, in the completion's (ServiceCompleted) and the cancellation's
# (BookingCancelled) facts.
_PROVIDER_ARGS = {"completion": "providerAmount", "cancellation": "providerAmount"}
_INVITER_ARGS = {"completion": "inviterFee", "cancellation": "inviterAmount"}


def _paid(role_field: str, address: str, args: dict[str, str], events=("completion", "cancellation")):
    """What `address` got from a booking in the role `role_field` names (0 in any other role),
    from the booking's `events` (a booking holds a completion or a cancellation, never both)."""
    amount = Coalesce(*(_chain_arg(event, args[event]) for event in events), _ZERO)
    return Case(When(**{role_field: address}, then=amount), default=_ZERO, output_field=_UINT)


@dataclass(frozen=True)
class ProviderTotals:
    total: int
    from_completions: int
    from_cancellations: int
    bookings: int
    services_completed: int  # ProviderEarnings: completions the chain sync counted


@dataclass(frozen=True)
class InviterTotals:
    total: int
    bookings: int


@dataclass(frozen=True)
class WalletEarnings:
    address: str
    provider: ProviderTotals
    inviter: InviterTotals


def bookings_with_earnings(address: str) -> QuerySet[Booking]:
    """The bookings that paid `address` (checksummed) something as provider or inviter, newest
    settled first, annotated `as_provider` and `as_inviter` (base units, exact)."""
    return (
        Booking.objects.filter(Q(provider_address=address) | Q(inviter_address=address))
        .annotate(
            as_provider=_paid("provider_address", address, _PROVIDER_ARGS),
            as_inviter=_paid("inviter_address", address, _INVITER_ARGS),
        )
        .filter(Q(as_provider__gt=0) | Q(as_inviter__gt=0))
        .order_by("-status_changed_at", "-id")
    )


def wallet_earnings(address: str) -> WalletEarnings:
    """Totals of `address` (checksummed) as provider and as inviter, to the base unit."""
    sums = Booking.objects.filter(Q(provider_address=address) | Q(inviter_address=address)).aggregate(
        provider_completions=Sum(_paid("provider_address", address, _PROVIDER_ARGS, events=("completion",))),
        provider_cancellations=Sum(_paid("provider_address", address, _PROVIDER_ARGS, events=("cancellation",))),
        inviter_total=Sum(_paid("inviter_address", address, _INVITER_ARGS)),
    )
    paid = bookings_with_earnings(address)
    earnings = ProviderEarnings.objects.filter(provider_address=address).first()
    completions = int(sums["provider_completions"] or 0)
    cancellations = int(sums["provider_cancellations"] or 0)
    return WalletEarnings(
        address=address,
        provider=ProviderTotals(
            total=completions + cancellations,
            from_completions=completions,
            from_cancellations=cancellations,
            bookings=paid.filter(as_provider__gt=0).count(),
            services_completed=earnings.services_completed if earnings else 0,
        ),
        inviter=InviterTotals(total=int(sums["inviter_total"] or 0), bookings=paid.filter(as_inviter__gt=0).count()),
    )


# -- the platform fee ledger (staff) ----------------------------------------------------------
@dataclass(frozen=True)
class LedgerTotals:
    platform: int
    inviter: int
    provider: int
    bookings: int


def fee_ledger_totals() -> LedgerTotals:
    sums = PlatformFee.objects.aggregate(
        platform=Sum("platform_amount"), inviter=Sum("inviter_amount"), provider=Sum("provider_amount"),
        bookings=Count("id"),
    )
    return LedgerTotals(
        platform=int(sums["platform"] or 0), inviter=int(sums["inviter"] or 0),
        provider=int(sums["provider"] or 0), bookings=sums["bookings"],
    )


def fee_ledger_days() -> QuerySet:
    """The fee ledger per UTC day its rows were recorded, newest first: dicts {day, platform,
    inviter, provider, bookings} (sums in base units, Decimal from the database: see as_int)."""
    return (
        PlatformFee.objects.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(
            platform=Sum("platform_amount"), inviter=Sum("inviter_amount"), provider=Sum("provider_amount"),
            bookings=Count("id"),
        )
        .order_by("-day")
    )


def day_totals(row: dict) -> tuple[date, LedgerTotals]:
    """One `fee_ledger_days` row as exact ints."""
    return row["day"], LedgerTotals(
        platform=int(row["platform"] or 0), inviter=int(row["inviter"] or 0), provider=int(row["provider"] or 0),
        bookings=row["bookings"],
    )


LEDGER_CSV_HEADER = (
    "recorded_at", "booking", "chain_booking_id", "tx_hash", "platform_amount", "inviter_amount",
    "provider_amount", "platform_usdc", "inviter_usdc", "provider_usdc", "inviter", "provider",
)


def fee_ledger_rows(fees: QuerySet[PlatformFee] | None = None) -> Iterator[tuple]:
    """The header, then one row per fee (oldest first): base units as integers and formatted USDC."""
    fees = PlatformFee.objects.all() if fees is None else fees
    yield LEDGER_CSV_HEADER
    for fee in fees.select_related("booking").order_by("created_at", "id").iterator(chunk_size=2000):
        booking = fee.booking
        yield (
            fee.created_at.astimezone(UTC).isoformat(), str(booking.uuid), booking.chain_booking_id, fee.tx_hash,
            int(fee.platform_amount), int(fee.inviter_amount), int(fee.provider_amount),
            format_amount(int(fee.platform_amount)), format_amount(int(fee.inviter_amount)),
            format_amount(int(fee.provider_amount)), booking.inviter_address, booking.provider_address,
        )
