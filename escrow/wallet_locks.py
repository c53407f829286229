"""Per-wallet serialisation of the few writes whose rules count a wallet's other rows: booking
(the unpaid-booking caps, the referral binding read at booking time), redeeming an invite code
(allowed only before the wallet's first booking) and creating invite codes (capped per wallet).

Transaction-level PostgreSQL advisory locks: released at commit or rollback, nothing to clean
up, and no row needs to exist yet to be locked (a wallet's first booking, its first code).
"""
from __future__ import annotations

from django.db import connection

from common.singleflight import lock_key


def as_customer(address: str) -> str:
    """The lock of a wallet's own bookings, referral binding and invite codes."""
    return f"escrow:wallet:{address.lower()}"


def as_provider(address: str) -> str:
    """The lock of the unpaid bookings naming `address` as their provider."""
    return f"escrow:provider:{address.lower()}"


def lock_until_commit(*names: str) -> None:
    """Wait for, then hold until the current transaction ends, the locks `names`.

    Taken in key order, so two transactions each locking several names never wait on each other
    in a circle. Call inside transaction.atomic()."""
    with connection.cursor() as cursor:
        for key in sorted({lock_key(name) for name in names}):
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
