"""What accumulates from abuse is purged on a schedule (issue 15, item 11): wallet tokens past
their expiry or revocation, and authorizations that were never used and can no longer be.
Sign-in nonces live in Redis with a TTL: Redis drops them itself. Used authorizations are the
audit of what was signed and paid: they are never purged."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.utils import timezone

from escrow import tasks
from escrow.models import BookingStatus, SignatureNonce, StatusSource, WalletToken
from escrow.retention import purge_expired_records
from escrow.services import issue_payment_authorization, request_cancellation
from escrow.siwe import NONCE_CACHE_PREFIX, issue_sign_in_nonce
from escrow.state import transition
from escrow.wallet_tokens import issue_wallet_token, revoke_wallet_token

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def test_expired_and_revoked_wallet_tokens_are_purged_after_the_retention(settings, customer):
    settings.WALLET_TOKEN_RETENTION_DAYS = 7
    now = timezone.now()
    live = issue_wallet_token(customer.address, now=now)
    expired_long_ago = issue_wallet_token(customer.address, now=now - 10 * DAY)
    expired_recently = issue_wallet_token(customer.address, now=now - 2 * DAY)
    revoked_long_ago = issue_wallet_token(customer.address, now=now)
    revoke_wallet_token(revoked_long_ago.record, now=now - 8 * DAY)

    counts = purge_expired_records(now=now)

    assert counts["wallet_tokens"] == 2
    remaining = set(WalletToken.objects.values_list("pk", flat=True))
    assert remaining == {live.record.pk, expired_recently.record.pk}
    assert expired_long_ago.record.pk not in remaining and revoked_long_ago.record.pk not in remaining


def test_unused_authorizations_of_finished_bookings_are_purged_used_ones_never(
    settings, customer, provider, make_booking
):
    settings.AUTHORIZATION_RETENTION_DAYS = 30
    now = timezone.now()
    long_ago = now - 40 * DAY
    paid = make_booking(customer, provider, scheduled_at=long_ago + 2 * DAY, now=long_ago)
    used = issue_payment_authorization(paid, now=long_ago)
    unused = issue_payment_authorization(paid, now=long_ago)
    SignatureNonce.objects.filter(pk=used.record.pk).update(consumed_at=long_ago, consumed_tx_hash="0x" + "ab" * 32)
    transition(paid, BookingStatus.PAID, source=StatusSource.CHAIN)
    lapsed_cancellation, _ = request_cancellation(paid, requested_by="customer", reason="no", now=long_ago)
    transition(paid, BookingStatus.COMPLETED, source=StatusSource.CHAIN)

    expired_booking = make_booking(customer, provider, scheduled_at=long_ago + 2 * DAY, now=long_ago)
    never_paid = issue_payment_authorization(expired_booking, now=long_ago)
    transition(expired_booking, BookingStatus.EXPIRED, source=StatusSource.API)

    # An open booking's authorizations stay whatever their age: the cancellation rules and the
    # expiry job read them.
    still_open = make_booking(customer, provider, scheduled_at=now + 2 * DAY, now=long_ago)
    transition(still_open, BookingStatus.PAID, source=StatusSource.CHAIN)
    open_cancellation, _ = request_cancellation(still_open, requested_by="customer", reason="no", now=long_ago)

    recent = make_booking(customer, provider)
    recent_unused = issue_payment_authorization(recent)
    transition(recent, BookingStatus.EXPIRED, source=StatusSource.API)

    counts = purge_expired_records(now=now)

    assert counts["authorizations"] == 3
    remaining = set(SignatureNonce.objects.values_list("pk", flat=True))
    assert remaining == {used.record.pk, open_cancellation.record.pk, recent_unused.record.pk}
    assert not {unused.record.pk, lapsed_cancellation.record.pk, never_paid.record.pk} & remaining
    assert purge_expired_records(now=now) == {"wallet_tokens": 0, "authorizations": 0}


def test_sign_in_nonces_expire_in_redis_by_themselves():
    nonce = issue_sign_in_nonce()
    client = cache._cache.get_client(NONCE_CACHE_PREFIX + nonce)
    ttl = client.ttl(cache.make_and_validate_key(NONCE_CACHE_PREFIX + nonce))
    assert 0 < ttl <= django_settings.SIWE_NONCE_TTL_SECONDS


def test_the_purge_runs_on_a_schedule_single_flight(customer):
    entry = django_settings.CELERY_BEAT_SCHEDULE["purge-expired-records"]
    assert entry["task"] == tasks.purge_expired_records.name
    assert tasks.purge_expired_records.acks_late
    issue_wallet_token(customer.address, now=timezone.now() - 400 * DAY)
    assert tasks.purge_expired_records() == {"wallet_tokens": 1, "authorizations": 0}
