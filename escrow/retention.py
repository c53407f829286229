"""What the escrow app keeps, and for how long: rows that abuse piles up and that no longer
mean anything are deleted (escrow.tasks.purge_expired_records, hourly).

- Wallet tokens WALLET_TOKEN_RETENTION_DAYS after they expired or were revoked: a dead token
  authenticates nothing (sign-in makes one per call, so a script signing in makes many).
- Authorizations (SignatureNonce) never used, of bookings that are finished (COMPLETED,
  CANCELLED, FAILED, EXPIRED), AUTHORIZATION_RETENTION_DAYS after they expired: the contract
  refuses them after their expiry, and authorize-payment signs one per call. Used ones (consumed
  by a payment or cancellation on chain) are the record of what was signed and paid, and are
  kept for good; so are those of open bookings, which the cancellation cap and the expiry
  job still read.

Sign-in nonces are not here: they live in Redis with a TTL of SIWE_NONCE_TTL_SECONDS (escrow.siwe),
and Redis drops them itself.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .models import BookingStatus, SignatureNonce, WalletToken
from .state import TERMINAL_STATUSES

# Rows deleted per statement: each batch is its own short transaction, so a first run over a
# large backlog neither holds locks for long nor builds one huge transaction.
BATCH_SIZE = 5_000
FINISHED_STATUSES = (*TERMINAL_STATUSES, BookingStatus.EXPIRED)


def purge_expired_records(*, now: datetime | None = None) -> dict[str, int]:
    """Delete dead wallet tokens and unused authorizations of finished bookings past their
    retention; returns how many of each."""
    now = now or timezone.now()
    token_cutoff = now - timedelta(days=settings.WALLET_TOKEN_RETENTION_DAYS)
    authorization_cutoff = now - timedelta(days=settings.AUTHORIZATION_RETENTION_DAYS)
    dead_tokens = WalletToken.objects.filter(Q(expires_at__lt=token_cutoff) | Q(revoked_at__lt=token_cutoff))
    unused_authorizations = SignatureNonce.objects.filter(
        consumed_at__isnull=True, expires_at__lt=authorization_cutoff, booking__status__in=FINISHED_STATUSES,
    )
    return {
        "wallet_tokens": _delete_in_batches(dead_tokens),
        "authorizations": _delete_in_batches(unused_authorizations),
    }


def _delete_in_batches(queryset) -> int:
    deleted = 0
    while True:
        batch = list(queryset.values_list("pk", flat=True)[:BATCH_SIZE])
        if not batch:
            return deleted
        deleted += queryset.model.objects.filter(pk__in=batch).delete()[0]
