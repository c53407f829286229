"""DRF throttling of the authorization endpoints (per wallet) and of sign-in and the public pages
(per client address, an IPv6 client per /64), kept in Redis (the default cache) so every
gunicorn worker shares one budget."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.utils import timezone
from rest_framework.test import APIClient

from escrow.models import Booking, BookingStatus, SignatureNonce, StatusSource
from escrow.state import transition

from .helpers import wallet, wallet_client

pytestmark = pytest.mark.django_db


def _authorize(client, booking):
    return client.post(f"/api/bookings/{booking.uuid}/authorize-payment/", format="json")


def test_the_eleventh_authorization_in_a_minute_is_429_with_retry_after(clients, customer, provider, make_booking):
    booking = make_booking(customer, provider)
    for _ in range(10):
        assert _authorize(clients["customer"], booking).status_code == 200
    response = _authorize(clients["customer"], booking)
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 60
    assert "throttled" in response.json()["detail"].lower()
    assert SignatureNonce.objects.count() == 10  # nothing signed for the refused request


def test_the_budget_is_per_wallet_and_shared_by_both_authorization_endpoints(
    clients, customer, provider, make_booking, settings
):
    settings.AUTHORIZATION_THROTTLE_RATE = "2/minute"
    unpaid = make_booking(customer, provider)
    paid = make_booking(customer, provider)
    transition(paid, BookingStatus.PAID, source=StatusSource.CHAIN)
    assert _authorize(clients["customer"], unpaid).status_code == 200
    cancel = clients["customer"].post(
        f"/api/bookings/{paid.uuid}/request-cancellation/", {"reason": "x"}, format="json"
    )
    assert cancel.status_code == 200
    assert _authorize(clients["customer"], unpaid).status_code == 429
    # A second token of the same wallet shares the wallet's budget.
    assert _authorize(wallet_client(customer), unpaid).status_code == 429
    # Another wallet has its own budget.
    other = wallet("other-customer")
    assert _authorize(wallet_client(other), make_booking(other, provider)).status_code == 200


def test_the_rate_is_a_setting(clients, customer, provider, make_booking, settings):
    settings.AUTHORIZATION_THROTTLE_RATE = "3/minute"
    booking = make_booking(customer, provider)
    assert [_authorize(clients["customer"], booking).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_the_request_history_lives_in_redis(clients, customer, provider, make_booking):
    assert isinstance(caches["default"], RedisCache)
    booking = make_booking(customer, provider)
    _authorize(clients["customer"], booking)
    redis = cache._cache.get_client(write=False)
    keys = [k.decode() for k in redis.keys("*throttle_authorization_wallet:*")]
    assert keys == [f"{cache.key_prefix}:1:throttle_authorization_wallet:{customer.address.lower()}"]
    # Clearing Redis (not the process) resets the budget: no per-process state.
    cache.clear()
    for _ in range(10):
        assert _authorize(clients["customer"], booking).status_code == 200


def test_sign_in_is_throttled_per_client_ip(db, settings):
    settings.SIWE_THROTTLE_RATE = "2/minute"
    client = APIClient()
    codes = [client.post("/api/auth/nonce/", format="json").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert client.post("/api/auth/verify/", {}, format="json").status_code == 429
    other_ip = APIClient(REMOTE_ADDR="10.0.0.7")
    assert other_ip.post("/api/auth/nonce/", format="json").status_code == 201


def test_a_forged_forwarded_for_header_does_not_reset_the_sign_in_limit(db, settings):
    settings.SIWE_THROTTLE_RATE = "2/minute"
    client = APIClient()
    codes = [
        client.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code
        for i in range(4)
    ]
    assert codes == [201, 201, 429, 429]


def test_behind_a_trusted_proxy_the_client_address_it_forwarded_is_the_identity(db, settings):
    settings.SIWE_THROTTLE_RATE = "2/minute"
    settings.API_TRUSTED_PROXIES = 1
    proxy = APIClient(REMOTE_ADDR="10.0.0.2")  # every request arrives from the proxy
    first = [proxy.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR="198.51.100.1").status_code
             for _ in range(3)]
    assert first == [201, 201, 429]
    # Another client behind the same proxy has its own budget; a forged address before the
    # proxy's entry is ignored.
    other = proxy.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.9")
    assert other.status_code == 201


def test_creating_bookings_and_reporting_transactions_share_a_per_wallet_limit(
    clients, customer, provider, make_booking, settings
):
    settings.WALLET_WRITE_THROTTLE_RATE = "3/minute"
    scheduled_at = (timezone.now() + timedelta(days=1)).isoformat()
    body = {"provider": provider.address, "amount": "1.00", "scheduled_at": scheduled_at}
    codes = [clients["customer"].post("/api/bookings/", body, format="json").status_code for _ in range(3)]
    assert codes == [201, 201, 201]
    refused = clients["customer"].post("/api/bookings/", body, format="json")
    assert refused.status_code == 429 and refused.json()["detail"] and refused["Retry-After"]
    booking = Booking.objects.filter(customer_address=customer.address).first()
    report = clients["customer"].post(f"/api/bookings/{booking.uuid}/submit-transaction/",
                                      {"tx_hash": "0x" + "ab" * 32}, format="json")
    assert report.status_code == 429  # the same budget
    assert Booking.objects.filter(customer_address=customer.address).count() == 3
    # Another wallet has its own.
    other = clients["provider"].post(f"/api/bookings/{booking.uuid}/submit-transaction/",
                                     {"tx_hash": "0x" + "ab" * 32}, format="json")
    assert other.status_code != 429


def test_an_ipv6_client_is_counted_by_its_64(db, settings):
    """One subscriber holds a whole /64 and can take a fresh address in it for every request."""
    settings.SIWE_THROTTLE_RATE = "2/minute"
    codes = [APIClient(REMOTE_ADDR=f"2001:db8:aa:bb::{i:x}").post("/api/auth/nonce/", format="json").status_code
             for i in range(1, 4)]
    assert codes == [201, 201, 429]
    assert APIClient(REMOTE_ADDR="2001:db8:aa:bb:ffff:1:2:3").post("/api/auth/nonce/", format="json").status_code == 429
    # The next /64 is someone else; an IPv4 client mapped into IPv6 is that IPv4 client.
    assert APIClient(REMOTE_ADDR="2001:db8:aa:bc::1").post("/api/auth/nonce/", format="json").status_code == 201
    assert APIClient(REMOTE_ADDR="::ffff:192.0.2.1").post("/api/auth/nonce/", format="json").status_code == 201
    assert APIClient(REMOTE_ADDR="192.0.2.1").post("/api/auth/nonce/", format="json").status_code == 201
    assert APIClient(REMOTE_ADDR="192.0.2.1").post("/api/auth/nonce/", format="json").status_code == 429


def test_the_client_address_a_trusted_proxy_forwards_is_counted_by_its_64_too(db, settings):
    settings.SIWE_THROTTLE_RATE = "1/minute"
    settings.API_TRUSTED_PROXIES = 1
    proxy = APIClient(REMOTE_ADDR="10.0.0.2")
    assert proxy.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR="2001:db8::1").status_code == 201
    assert proxy.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR="2001:db8::2").status_code == 429
    assert proxy.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR="2001:db8:0:1::1").status_code == 201


def test_forwarded_requests_without_trusted_proxies_are_warned_about_once(db, monkeypatch, caplog):
    """Behind a proxy with API_TRUSTED_PROXIES left at 0, every client shares the proxy's one budget:
    the log says so at the first request that carries X-Forwarded-For, and only then."""
    from escrow import throttling

    monkeypatch.setattr(throttling, "_proxy_warning_given", False)
    client = APIClient(REMOTE_ADDR="10.0.0.2")
    client.post("/api/auth/nonce/", format="json")
    assert "API_TRUSTED_PROXIES" not in caplog.text  # no proxy header: nothing to say
    for i in range(3):
        client.post("/api/auth/nonce/", format="json", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
    warnings = [r for r in caplog.records if "API_TRUSTED_PROXIES is 0" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "first from 10.0.0.2" in warnings[0].getMessage()

