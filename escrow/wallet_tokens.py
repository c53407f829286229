"""API bearer tokens for signed-in wallets: issue, resolve, revoke.

The token itself is handed out once; the database keeps only its SHA-256, so a leaked
table does not leak sessions. A token is bound to exactly one address (EIP-4361: "sessions
MUST be bound to the address").
"""
from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection
from django.utils import timezone

from common.db import server_binding_cursor

from .models import Booking, WalletToken

# Longer than any token we issue (43 characters); anything longer is refused without a query.
MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown to the client once, never stored
    address: str
    expires_at: datetime
    record: WalletToken


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_wallet_token(
    address: str, *, now: datetime | None = None, not_after: datetime | None = None
) -> IssuedToken:
    """A new random token for `address` (already verified and checksummed by the caller), valid
    WALLET_TOKEN_TTL_SECONDS or until `not_after` if sooner (the sign-in message's Expiration
    Time: the wallet signed for no longer than that)."""
    now = now or timezone.now()
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=settings.WALLET_TOKEN_TTL_SECONDS)
    if not_after is not None:
        expires_at = min(expires_at, not_after)
    record = WalletToken.objects.create(address=address, token_hash=hash_token(token), expires_at=expires_at)
    return IssuedToken(token=token, address=address, expires_at=expires_at, record=record)


# -- resolving: the first query of every authenticated API request ----------------------------
# Written as SQL (built once per process from the models' metadata) rather than as ORM querysets:
# compiling a queryset costs several times more CPU than PostgreSQL spends answering it, and on
# the booking routes the token and the booking come back in one round trip (a LEFT JOIN), as a
# prepared statement (bookme.db: planning the join costs more than running it). Rows
# become model instances the ORM's way (each field's database converters, then Model.from_db).
_TOKEN_FIELDS = ("id", "address", "expires_at")  # what request.auth carries, like .only() would


def _column(model, field_name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(field_name).column)


@cache
def _token_statement(with_booking: bool) -> str:
    token_table = connection.ops.quote_name(WalletToken._meta.db_table)
    selected = [f"t.{_column(WalletToken, name)}" for name in _TOKEN_FIELDS]
    join = ""
    if with_booking:
        selected += [f"b.{connection.ops.quote_name(f.column)}" for f in Booking._meta.concrete_fields]
        # The booking only when the token's wallet is its customer or provider (what
        # escrow.services.bookings_visible_to gives a wallet): anyone else's booking stays invisible.
        join = (
            f"LEFT JOIN {connection.ops.quote_name(Booking._meta.db_table)} b ON b.{_column(Booking, 'uuid')} = %s AND "
            f"(b.{_column(Booking, 'customer_address')} = t.{_column(WalletToken, 'address')} OR "
            f"b.{_column(Booking, 'provider_address')} = t.{_column(WalletToken, 'address')})"
        )
    sql = (
        f"SELECT {', '.join(selected)} FROM {token_table} t {join} "
        f"WHERE t.{_column(WalletToken, 'token_hash')} = %s AND t.{_column(WalletToken, 'revoked_at')} IS NULL "
        f"AND t.{_column(WalletToken, 'expires_at')} > %s"
    )
    return sql


@cache
def _booking_row_layout() -> tuple[tuple[str, ...], int, list[tuple[int, list, object]]]:
    """Booking's field names in column order, the primary key's position, and (position,
    converters, column) for each field whose database value needs converting, as
    SQLCompiler.get_converters finds them for a queryset (the process has one database backend)."""
    fields = Booking._meta.concrete_fields
    converters = []
    for position, field in enumerate(fields):
        column = field.get_col(Booking._meta.db_table)
        found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if found:
            converters.append((position, found, column))
    names = tuple(f.attname for f in fields)
    return names, names.index(Booking._meta.pk.attname), converters


def resolve_wallet_token_with_booking(
    token: str, booking_uuid: uuid.UUID | None, *, now: datetime | None = None
) -> tuple[WalletToken | None, Booking | None]:
    """The live token record for `token` (as resolve_wallet_token) and, in the same query, the
    booking `booking_uuid` if the token's wallet is its customer or provider (else None)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None, None
    with_booking = booking_uuid is not None
    params = [hash_token(token), now or timezone.now()]
    if with_booking:
        params.insert(0, booking_uuid)
    with server_binding_cursor() as cursor:
        cursor.execute(_token_statement(with_booking), params, prepare=True)
        row = cursor.fetchone()
    if row is None:
        return None, None
    record = WalletToken.from_db(connection.alias, _TOKEN_FIELDS, row[: len(_TOKEN_FIELDS)])
    if not with_booking:
        return record, None
    names, pk_position, converters = _booking_row_layout()
    values = list(row[len(_TOKEN_FIELDS) :])
    if values[pk_position] is None:  # the LEFT JOIN found no booking visible to this wallet
        return record, None
    for position, field_converters, column in converters:
        for convert in field_converters:
            values[position] = convert(values[position], column, connection)
    return record, Booking.from_db(connection.alias, names, values)


def resolve_wallet_token(token: str, *, now: datetime | None = None) -> WalletToken | None:
    """The live (unexpired, unrevoked) token record for `token`, or None."""
    return resolve_wallet_token_with_booking(token, None, now=now)[0]


def revoke_wallet_token(record: WalletToken, *, now: datetime | None = None) -> None:
    WalletToken.objects.filter(pk=record.pk, revoked_at__isnull=True).update(revoked_at=now or timezone.now())
