"""Reconciliation fixtures: a customer funded on the session anvil, bookings, payments, a scan."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from escrow.models import BookingStatus, StatusSource
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from escrow.state import transition
from tests.escrow.helpers import wallet


def paid_past_service(customer: str, provider: str, *, hours_ago: float = 10, amount: str = "100.00"):
    """A booking paid (as the database knows it) `hours_ago`, for a service half that long ago:
    due for auto-complete, no chain involved."""
    booked_at = timezone.now() - timedelta(hours=hours_ago)
    booking = create_booking(customer=customer, provider=provider, amount=amount,
                             scheduled_at=booked_at + timedelta(hours=hours_ago / 2), now=booked_at)
    transition(booking, BookingStatus.PAID, source=StatusSource.CHAIN)
    return booking


@pytest.fixture
def customer(chain_settings):
    return chain_settings.accounts.customers[1]


@pytest.fixture
def provider():
    return wallet("reconciliation-provider")


@pytest.fixture
def make_booking(customer, provider):
    def make(amount="100.50", **overrides):
        fields = {
            "customer": customer.address,
            "provider": provider.address,
            "amount": amount,
            "scheduled_at": timezone.now() + timedelta(days=2),
            "description": "reconciliation",
        }
        fields.update(overrides)
        return create_booking(**fields)

    return make


@pytest.fixture
def pay(chain_settings, customer):
    """Pay a booking on chain with a fresh backend authorization; the tx hash (nothing scanned)."""

    def pay_(booking) -> str:
        auth = sign_payment_authorization(booking)
        receipt = chain_settings.pay_booking(auth.message, auth.signature, customer.address)
        return receipt["transactionHash"].to_0x_hex()

    return pay_


def scan_to_head(chain) -> None:
    """Run the chain scanner (chain_events.scanner) until it has processed the current head."""
    from chain_events import scanner
    from chain_events.models import SyncCursor

    head = chain.block_number()
    scanner.scan_chain()
    assert SyncCursor.objects.get().last_block >= head
