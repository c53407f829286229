"""The outbox's two sides: numbering committed notifications (the relay), and reading them back by
seq (the stream's replay and catch-up; webhooks keep their own cursor over the same seq).

`seq` is gapless and grows in the order notifications become visible (committed): numbering runs
in one transaction under a transaction-level advisory lock, so two numberers can never interleave,
and a reader that sees seq N sees every seq below it (each numbering commits as a whole, after the
one before it).
"""
from __future__ import annotations

from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from common.db import server_binding_cursor
from common.singleflight import lock_key

from .models import Notification

_TABLE = Notification._meta.db_table
NUMBERING_LOCK = lock_key("notifications.number-outbox")
STAFF_GROUP = "staff"


def number_pending(limit: int) -> list[Notification]:
    """Give up to `limit` committed, unnumbered notifications their seq (id order), set
    published_at, commit; return them in seq order."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [NUMBERING_LOCK])
        # FOR UPDATE: a row cannot vanish (a booking deleted) between being counted and numbered,
        # which would leave a hole in seq.
        pending = Notification.objects.select_for_update().filter(seq__isnull=True).order_by("id")
        ids = list(pending.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        top = Notification.objects.aggregate(top=Max("seq"))["top"] or 0
        now = timezone.now()
        with server_binding_cursor() as cursor:
            cursor.execute(
                f"""UPDATE {_TABLE} AS n SET seq = u.seq, published_at = %s
                    FROM unnest(%b::bigint[], %b::bigint[]) AS u(id, seq) WHERE n.id = u.id""",
                [now, ids, list(range(top + 1, top + 1 + len(ids)))],
            )
        return list(Notification.objects.filter(id__in=ids).order_by("seq"))


# -- reading by seq --------------------------------------------------------------------------------
def latest_seq() -> int:
    """The newest seq in the outbox (0 when none). Every seq up to it is readable."""
    return Notification.objects.aggregate(top=Max("seq"))["top"] or 0


def visible_to(wallet: str | None):
    """Numbered notifications `wallet` may see (customer, provider or inviter of the booking when it
    changed); None: staff, everything."""
    numbered = Notification.objects.filter(seq__isnull=False)
    if wallet is None:
        return numbered
    return numbered.filter(Q(customer_address=wallet) | Q(provider_address=wallet) | Q(inviter_address=wallet))


def read_after(wallet: str | None, after: int, limit: int) -> tuple[list[Notification], int]:
    """(`wallet`'s notifications with seq > `after`, at most `limit`, in seq order; the seq they are
    complete through). The newest seq is read first and the rows are bounded by it: everything up
    to it was committed when it was read, so nothing in between can appear later."""
    top = latest_seq()
    rows = list(visible_to(wallet).filter(seq__gt=after, seq__lte=top).order_by("seq")[:limit])
    through = rows[-1].seq if len(rows) == limit else max(top, after)
    return rows, through


# -- what clients receive ----------------------------------------------------------------------------
def event_fields(notification: Notification) -> dict:
    """An event frame without `roles` (which depend on who receives it)."""
    return {
        "type": "event",
        "seq": notification.seq,
        "kind": notification.kind,
        "booking": str(notification.booking_uuid),
        "from_status": notification.from_status,
        "to_status": notification.to_status,
        "source": notification.source,
        "tx_hash": notification.tx_hash,
        "at": notification.created_at.isoformat(),
    }


def parties(notification: Notification) -> dict[str, str]:
    """role -> address of the wallets that see `notification`."""
    found = {"customer": notification.customer_address, "provider": notification.provider_address}
    if notification.inviter_address:
        found["inviter"] = notification.inviter_address
    return found


def roles_of(wallet: str | None, party_addresses: dict[str, str]) -> list[str]:
    if wallet is None:
        return []
    wallet = wallet.lower()
    return [role for role, address in party_addresses.items() if address.lower() == wallet]


def wallet_group(address: str) -> str:
    """The channel layer group of one wallet's sockets (group names are case-sensitive)."""
    return f"wallet.{address.lower()}"


def groups_of(notification: Notification) -> list[str]:
    return sorted({wallet_group(a) for a in parties(notification).values()}) + [STAFF_GROUP]


def layer_message(notification: Notification) -> dict:
    """What the relay sends to the groups: handled by BookingStreamConsumer.outbox_event."""
    return {"type": "outbox.event", "event": event_fields(notification), "parties": parties(notification)}
