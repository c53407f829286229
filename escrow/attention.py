"""Attention items: why a booking needs staff, raised and closed in the booking's transaction.

`Booking.needs_attention` is "has an open item"; every function here keeps the two in step and
expects the booking's row to be locked by the caller (select_for_update), like every writer of
a booking. The chain sync raises its kinds in bulk (escrow.chain_effects, through
`raised_chain_reasons` and `insert_items`) and withdraws those a later fold of the booking's
events no longer raises (`open_items_of`, `withdraw_items`: e.g. a cancellation folded "without a
known payment" until the payment's log was stored too); reconciliation raises and withdraws the
item of each flag; staff acknowledge the chain sync's items.
"""
from __future__ import annotations

from django.utils import timezone

from .models import CHAIN_ATTENTION_KINDS, AttentionItem, Booking


class NothingToAcknowledge(ValueError):
    """The booking has no open item that staff may acknowledge (the message says why)."""


def open_items(booking: Booking) -> list[AttentionItem]:
    return list(booking.attention_items.filter(acknowledged_at=None))


#: acknowledged_by of the items the chain sync withdrew itself (no longer raised by the chain's events).
CHAIN_SYNC = "chain sync"


def raised_chain_reasons(booking_ids) -> dict[int, set[str]]:
    """Every reason the chain sync raised so far per booking, open or acknowledged by staff: the
    chain sync raises a reason only once, so an acknowledged one never comes back. One it withdrew
    itself does come back if the chain's events raise it again (a reorg undone)."""
    out: dict[int, set[str]] = {}
    rows = AttentionItem.objects.filter(
        booking_id__in=list(booking_ids), kind__in=CHAIN_ATTENTION_KINDS
    ).exclude(acknowledged_by=CHAIN_SYNC)
    for booking_id, reason in rows.values_list("booking_id", "reason"):
        out.setdefault(booking_id, set()).add(reason)
    return out


def insert_items(new_items: list[tuple[int, str, str]], *, now) -> None:
    """Store (booking id, kind, reason) items in one statement (the chain sync's bulk write,
    which sets needs_attention on the same bookings itself)."""
    AttentionItem.objects.bulk_create(
        [AttentionItem(booking_id=booking_id, kind=kind, reason=reason, raised_at=now)
         for booking_id, kind, reason in new_items]
    )


def open_items_of(booking_ids) -> dict[int, list[tuple[int, str, str]]]:
    """(id, kind, reason) of every open item per booking, any kind (one read for all of them)."""
    out: dict[int, list[tuple[int, str, str]]] = {}
    rows = AttentionItem.objects.filter(booking_id__in=list(booking_ids), acknowledged_at=None).order_by("id")
    for item_id, booking_id, kind, reason in rows.values_list("id", "booking_id", "kind", "reason"):
        out.setdefault(booking_id, []).append((item_id, kind, reason))
    return out


def withdraw_items(withdrawn: list[tuple[int, str]], *, now) -> None:
    """Close (item id, why) items the chain sync no longer raises, as acknowledged by CHAIN_SYNC
    (the chain sync's bulk write, which sets needs_attention on their bookings itself)."""
    for item_id, why in withdrawn:
        AttentionItem.objects.filter(pk=item_id, acknowledged_at=None).update(
            acknowledged_at=now, acknowledged_by=CHAIN_SYNC, acknowledged_why=why,
        )


def raise_attention(booking: Booking, kind: str, reason: str, *, now=None) -> AttentionItem | None:
    """Open an item unless the same one is open already; None when it was."""
    if booking.attention_items.filter(kind=kind, reason=reason, acknowledged_at=None).exists():
        return None
    item = AttentionItem.objects.create(booking=booking, kind=kind, reason=reason, raised_at=now or timezone.now())
    if not booking.needs_attention:
        booking.needs_attention = True
        booking.save(update_fields=["needs_attention", "updated_at"])
    return item


def withdraw_attention(booking: Booking, kind: str, reason: str, *, by: str, why: str, now=None) -> None:
    """Close the open item(s) of this kind and reason (e.g. its reconciliation flag was resolved);
    the booking leaves the attention list once no other item keeps it there."""
    booking.attention_items.filter(kind=kind, reason=reason, acknowledged_at=None).update(
        acknowledged_at=now or timezone.now(), acknowledged_by=by[:200], acknowledged_why=why,
    )
    _refresh_needs_attention(booking)


def acknowledge_chain_items(booking: Booking, *, by: str, why: str, now=None) -> int:
    """Staff accept what the chain sync raised (the chain's state stands): its open items close
    with who, when and why. Items of open reconciliation flags are left to their flags.
    Returns how many closed; NothingToAcknowledge when none could."""
    items = booking.attention_items.filter(acknowledged_at=None)
    if not items.exists():
        raise NothingToAcknowledge("nothing to acknowledge")
    closed = items.filter(kind__in=CHAIN_ATTENTION_KINDS).update(
        acknowledged_at=now or timezone.now(), acknowledged_by=by[:200], acknowledged_why=why,
    )
    if not closed:
        raise NothingToAcknowledge("only open reconciliation flags keep it on the list: resolve those flags")
    _refresh_needs_attention(booking)
    return closed


def _refresh_needs_attention(booking: Booking) -> None:
    still_open = booking.attention_items.filter(acknowledged_at=None).exists()
    if booking.needs_attention != still_open:
        booking.needs_attention = still_open
        booking.save(update_fields=["needs_attention", "updated_at"])


