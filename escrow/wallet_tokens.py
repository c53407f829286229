"""API bearer tokens for signed-in wallets: issue, resolve, revoke.

The token itself is handed out once; the database keeps only its SHA-256, so a leaked
table does not leak sessions. A token is bound to exactly one address (EIP-4361: "sessions
MUST be bound to the address").
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .models import WalletToken

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


def issue_wallet_token(address: str, *, now: datetime | None = None) -> IssuedToken:
    """A new random token for `address` (already verified and checksummed by the caller)."""
    now = now or timezone.now()
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=settings.WALLET_TOKEN_TTL_SECONDS)
    record = WalletToken.objects.create(address=address, token_hash=hash_token(token), expires_at=expires_at)
    return IssuedToken(token=token, address=address, expires_at=expires_at, record=record)


def resolve_wallet_token(token: str, *, now: datetime | None = None) -> WalletToken | None:
    """The live (unexpired, unrevoked) token record for `token`, or None."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        return WalletToken.objects.only("id", "address", "expires_at").get(
            token_hash=hash_token(token), revoked_at__isnull=True, expires_at__gt=now or timezone.now()
        )
    except WalletToken.DoesNotExist:
        return None


def revoke_wallet_token(record: WalletToken, *, now: datetime | None = None) -> None:
    WalletToken.objects.filter(pk=record.pk, revoked_at__isnull=True).update(revoked_at=now or timezone.now())
