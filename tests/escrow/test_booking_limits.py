"""Bookings that cannot be paid out, and booking spam (issue 15, items 5 and 11).

- A provider that is our escrow or USDC contract is refused: a payout there stays in the escrow for good.
- Open unpaid bookings are capped per wallet and per provider (409 naming the cap).
- An unpaid booking expires UNPAID_BOOKING_TTL_SECONDS after it started waiting for payment.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from escrow.errors import BookingConflict
from escrow.models import Booking, BookingStatus
from escrow.services import create_booking, expire_unused_authorizations, issue_payment_authorization

from .helpers import future_iso, wallet, wallet_client

pytestmark = pytest.mark.django_db


def _create(client, provider_address: str):
    body = {"provider": provider_address, "amount": "10", "scheduled_at": future_iso()}
    return client.post("/api/bookings/", body, format="json")


# -- item 5 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("contract", ["ESCROW_CONTRACT_ADDRESS", "USDC_CONTRACT_ADDRESS"])
@pytest.mark.parametrize("spelling", [str, str.lower])
def test_our_contracts_cannot_be_the_provider(settings, clients, contract, spelling):
    response = _create(clients["customer"], spelling(getattr(settings, contract)))
    assert response.status_code == 400, response.content
    [reason] = response.json()["provider"]
    assert "contract" in reason
    assert not Booking.objects.exists()


# -- item 11: caps -------------------------------------------------------------------------------
def test_open_unpaid_bookings_per_wallet_are_capped(settings, clients):
    settings.MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET = 3
    answers = [_create(clients["customer"], wallet(f"provider {i}").address) for i in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 201, 409], answers[-1].content
    assert "3 unpaid bookings" in answers[-1].json()["detail"]
    assert Booking.objects.count() == 3

    # Paid (or expired) bookings no longer count: the wallet can book again.
    booking = Booking.objects.first()
    booking.status = BookingStatus.EXPIRED
    booking.save()
    assert _create(clients["customer"], wallet("provider 9").address).status_code == 201


def test_open_unpaid_bookings_per_provider_are_capped(settings, provider):
    settings.MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER = 2
    answers = [_create(wallet_client(wallet(f"spammer {i}")), provider.address) for i in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 409], answers[-1].content
    assert "provider" in answers[-1].json()["detail"]
    assert Booking.objects.filter(provider_address=provider.address).count() == 2


def test_reopening_an_expired_booking_respects_the_wallet_cap(settings, customer, provider, make_booking):
    """Otherwise a wallet books up to the cap, lets them expire, books again, and reopens them all."""
    settings.MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET = 1
    expired = make_booking(customer, provider)
    Booking.objects.filter(pk=expired.pk).update(status=BookingStatus.EXPIRED)
    make_booking(customer, wallet("another provider"))
    response = wallet_client(customer).post(f"/api/bookings/{expired.uuid}/authorize-payment/", format="json")
    assert response.status_code == 409, response.content
    assert "1 unpaid booking" in response.json()["detail"]
    expired.refresh_from_db()
    assert expired.status == BookingStatus.EXPIRED


# -- item 11: unpaid bookings expire -------------------------------------------------------------
def test_a_never_authorized_booking_expires_after_the_unpaid_ttl(settings, customer, provider, make_booking):
    settings.UNPAID_BOOKING_TTL_SECONDS = 3600
    booking = make_booking(customer, provider, scheduled_at=timezone.now() + timedelta(days=30))
    assert expire_unused_authorizations(now=timezone.now() + timedelta(seconds=3500))["expired"] == 0
    assert expire_unused_authorizations(now=timezone.now() + timedelta(seconds=3700))["expired"] == 1
    booking.refresh_from_db()
    assert booking.status == BookingStatus.EXPIRED
    change = booking.status_changes.last()
    assert (change.from_status, change.to_status) == (BookingStatus.PENDING_PAYMENT, BookingStatus.EXPIRED)
    assert "unpaid" in change.note


def test_a_live_authorization_keeps_an_old_unpaid_booking_open(settings, customer, provider, make_booking):
    """A payment may still land with it: expiring it now would only be undone by the chain."""
    settings.UNPAID_BOOKING_TTL_SECONDS = 60
    booking = make_booking(customer, provider)
    later = timezone.now() + timedelta(seconds=120)
    issue_payment_authorization(booking, now=later)
    assert expire_unused_authorizations(now=later + timedelta(seconds=10))["expired"] == 0
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT


@pytest.mark.django_db(transaction=True)
def test_concurrent_bookings_cannot_both_take_the_last_place(settings, customer):
    """The count and the insert are serialised per wallet (escrow.wallet_locks): without the lock
    both requests count 1 of 2 and both insert."""
    settings.MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET = 2
    create_booking(customer=customer.address, provider=wallet("provider 0").address, amount="1",
                   scheduled_at=timezone.now() + timedelta(days=1))
    start = threading.Barrier(4)

    def book(index: int):
        start.wait()
        try:
            create_booking(customer=customer.address, provider=wallet(f"provider {index + 1}").address, amount="1",
                           scheduled_at=timezone.now() + timedelta(days=1))
            return "created"
        except BookingConflict:
            return "refused"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(book, range(4)))
    assert outcomes == ["created", "refused", "refused", "refused"]
    assert Booking.objects.filter(customer_address=customer.address).count() == 2
