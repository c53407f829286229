"""The mechanisms that make authorize-payment cheap, each checked against the plain way it replaces:
the one-round-trip Redis throttle, the token + booking lookup in one query, the prepared
statements, and the response built without nested serializers."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from django.core.cache import cache, caches
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from redis.client import Redis

from escrow.authentication import WalletPrincipal
from escrow.models import Booking, BookingStatus, SignatureNonce, StatusSource
from escrow.serializers import PaymentAuthorizationSerializer, payment_authorization_body
from escrow.services import issue_payment_authorization
from escrow.state import transition
from escrow.throttling import WalletAuthorizationThrottle
from escrow.wallet_tokens import issue_wallet_token, resolve_wallet_token_with_booking, revoke_wallet_token

from .helpers import wallet


# -- the throttle: one Redis round trip, atomic ------------------------------------------------
def _throttle(rate: str, *, now: float | None = None) -> WalletAuthorizationThrottle:
    throttle = type("RateForTest", (WalletAuthorizationThrottle,), {"rate": rate})()
    if now is not None:
        throttle.timer = lambda: now
    return throttle


def _wallet_request(label: str):
    return SimpleNamespace(user=WalletPrincipal(address=wallet(label).address, token_id=1))


def test_the_throttle_check_is_one_redis_command(monkeypatch):
    cache.clear()
    sent = []
    original = Redis.execute_command

    def counting(self, *args, **options):
        sent.append(args[0])
        return original(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", counting)
    request = _wallet_request("one-round-trip")
    assert _throttle("5/minute").allow_request(request, None)
    assert _throttle("5/minute").allow_request(request, None)
    assert sent == ["EVALSHA", "EVALSHA"]  # not GET + SET per request


def test_the_window_slides_like_drfs_and_wait_is_drfs_retry_after():
    cache.clear()
    request = _wallet_request("sliding")
    assert _throttle("2/minute", now=1000.0).allow_request(request, None)
    assert _throttle("2/minute", now=1030.0).allow_request(request, None)
    refused = _throttle("2/minute", now=1040.0)
    assert not refused.allow_request(request, None)
    assert refused.wait() == pytest.approx(20.0)  # the oldest request leaves the window at 1060
    assert not _throttle("2/minute", now=1059.9).allow_request(request, None)  # refusals are not recorded
    assert _throttle("2/minute", now=1060.0).allow_request(request, None)  # 1000 left the window
    assert not _throttle("2/minute", now=1061.0).allow_request(request, None)


def test_concurrent_requests_never_exceed_the_rate():
    """DRF's GET-then-SET lets two workers read the same history and both pass; the script cannot."""
    cache.clear()
    request = _wallet_request("concurrent")
    start = threading.Barrier(8)
    allowed = []

    def attempt():
        start.wait()
        for _ in range(10):
            allowed.append(_throttle("25/minute").allow_request(request, None))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 25 and len(allowed) == 80


def test_a_history_drf_stored_is_replaced_not_an_error():
    cache.clear()
    request = _wallet_request("old-format")
    key = _throttle("3/minute").get_cache_key(request, None)
    cache.set(key, [time.time()] * 3, 60)  # DRF's own format: a pickled list under the same key
    assert _throttle("3/minute").allow_request(request, None)
    redis = caches["default"]._cache.get_client(write=True)
    assert redis.type(cache.make_key(key)) == b"list"


# -- token and booking in one query -------------------------------------------------------------
pytestmark_db = pytest.mark.django_db  # (the throttle tests above need no database)


@pytestmark_db
def test_the_joined_lookup_loads_the_booking_exactly_as_the_orm_does(customer, provider, inviter, make_booking):
    booking = make_booking(customer, provider, inviter=inviter.address)
    token = issue_wallet_token(customer.address).token
    record, loaded = resolve_wallet_token_with_booking(token, booking.uuid)
    assert record.address == customer.address
    expected = Booking.objects.get(pk=booking.pk)
    assert model_to_dict(loaded) == model_to_dict(expected)
    assert {f.attname: getattr(loaded, f.attname) for f in Booking._meta.concrete_fields} == {
        f.attname: getattr(expected, f.attname) for f in Booking._meta.concrete_fields
    }
    assert isinstance(loaded.amount, int) and isinstance(loaded.chain_data, dict)
    assert not loaded._state.adding


@pytestmark_db
def test_the_joined_lookup_only_finds_the_wallets_own_bookings(customer, provider, stranger, make_booking):
    booking = make_booking(customer, provider)
    for account, visible in ((customer, True), (provider, True), (stranger, False)):
        record, loaded = resolve_wallet_token_with_booking(issue_wallet_token(account.address).token, booking.uuid)
        assert record is not None and record.address == account.address
        assert (loaded == booking) if visible else (loaded is None)


@pytestmark_db
def test_a_dead_token_finds_nothing_even_with_a_booking(customer, provider, make_booking):
    booking = make_booking(customer, provider)
    issued = issue_wallet_token(customer.address)
    revoke_wallet_token(issued.record)
    assert resolve_wallet_token_with_booking(issued.token, booking.uuid) == (None, None)
    assert resolve_wallet_token_with_booking("x" * 200, booking.uuid) == (None, None)


@pytestmark_db
def test_authorize_payment_costs_two_statements(clients, customer, provider, make_booking):
    booking = make_booking(customer, provider)
    url = f"/api/bookings/{booking.uuid}/authorize-payment/"
    assert clients["customer"].post(url, format="json").status_code == 200  # prepares, may fetch a nonce block
    before = _prepared_statements()
    with CaptureQueriesContext(connection) as queries:
        response = clients["customer"].post(url, format="json")
    assert response.status_code == 200
    # Nothing through the ORM but, 1 time in 32, a nonce block; the token + booking read and the
    # SignatureNonce insert run as statements prepared on the first request.
    assert [q["sql"] for q in queries.captured_queries if "nextval" not in q["sql"]] == []
    assert _prepared_statements() == before
    assert any("escrow_wallettoken" in sql and "escrow_booking" in sql for sql in before), before
    assert any(sql.startswith("INSERT INTO \"escrow_signaturenonce\"") for sql in before)
    assert SignatureNonce.objects.filter(booking=booking).count() == 2


# -- prepared statements --------------------------------------------------------------------------
def _prepared_statements() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_statements_are_prepared_again_on_a_new_connection(customer, provider, make_booking):
    booking = make_booking(customer, provider)
    token = issue_wallet_token(customer.address).token
    assert resolve_wallet_token_with_booking(token, booking.uuid)[1] == booking
    assert any("escrow_wallettoken" in sql for sql in _prepared_statements())
    connection.close()  # a new database session knows no prepared statements
    assert resolve_wallet_token_with_booking(token, booking.uuid)[1] == booking
    assert any("escrow_wallettoken" in sql for sql in _prepared_statements())


@pytest.mark.django_db(transaction=True)
def test_behind_a_transaction_pooler_nothing_is_prepared(monkeypatch, customer, provider, make_booking):
    # What DATABASE_PREPARED_STATEMENTS=false configures (settings.DATABASES).
    monkeypatch.setitem(
        connection.settings_dict, "OPTIONS", {**connection.settings_dict["OPTIONS"], "prepare_threshold": None},
    )
    connection.close()
    booking = make_booking(customer, provider)
    token = issue_wallet_token(customer.address).token
    assert resolve_wallet_token_with_booking(token, booking.uuid)[1] == booking
    assert _prepared_statements() == set()


# -- the response body ----------------------------------------------------------------------------
@pytestmark_db
@pytest.mark.parametrize("with_inviter", [False, True])
def test_the_direct_body_equals_the_documented_serializer(customer, provider, inviter, make_booking, with_inviter):
    booking = make_booking(customer, provider, **({"inviter": inviter.address} if with_inviter else {}))
    signed = issue_payment_authorization(booking)
    direct = payment_authorization_body(signed)
    documented = json.loads(json.dumps(PaymentAuthorizationSerializer(signed).data))
    assert direct == documented
    assert list(direct) == list(documented)  # same key order in the JSON too


@pytestmark_db
def test_an_expired_booking_still_goes_back_to_pending_payment_through_the_fast_path(
    clients, customer, provider, make_booking,
):
    booking = make_booking(customer, provider)
    transition(booking, BookingStatus.EXPIRED, source=StatusSource.API)
    response = clients["customer"].post(f"/api/bookings/{booking.uuid}/authorize-payment/", format="json")
    assert response.status_code == 200
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT
    assert booking.status_changes.order_by("-id").first().to_status == BookingStatus.PENDING_PAYMENT
