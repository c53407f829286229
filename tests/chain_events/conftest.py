"""Helpers for the chain sync tests: bookings created by escrow.services and paid on the
session anvil with authorizations signed by escrow.signing (the real path a wallet takes)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from eth_account import Account
from eth_utils import keccak

from chain_events import scanner
from chain_events.reports import ScanReport
from escrow import referrals, services
from escrow.models import Booking


def provider_address(label: str = "provider") -> str:
    return Account.from_key(keccak(text=f"bookme-chain-test:{label}")).address


class Flow:
    """Drives bookings through the escrow contract the way clients do."""

    def __init__(self, chain):
        self.chain = chain

    def customer(self, index: int = 0) -> str:
        return self.chain.accounts.customers[index].address

    def booking(
        self, *, customer: int = 0, amount: int = 100 * 10**6, provider: str = "provider", inviter=None
    ) -> Booking:
        if inviter:  # the customer redeems the inviter's code first (escrow.referrals)
            referrals.redeem_invite_code(self.customer(customer), referrals.create_invite_code(inviter))
        return services.create_booking(
            customer=self.customer(customer),
            provider=provider_address(provider),
            amount=amount,
            scheduled_at=timezone.now() + timedelta(days=3),
            actor="test",
        )

    def pay(self, booking: Booking) -> dict:
        auth = services.issue_payment_authorization(booking, actor="test")
        return self.chain.pay_booking(auth.message, auth.signature, booking.customer_address)

    def complete(self, booking: Booking) -> dict:
        return self.chain.complete_service(booking.chain_booking_id, booking.customer_address)

    def cancel(self, booking: Booking, reason: str = "changed plans") -> dict:
        auth, _terms = services.request_cancellation(
            Booking.objects.get(pk=booking.pk), requested_by="customer", reason=reason, actor="test"
        )
        return self.chain.cancel_booking(auth.message, auth.signature, booking.customer_address)

    def paid_booking(self, **kwargs) -> tuple[Booking, dict]:
        booking = self.booking(**kwargs)
        return booking, self.pay(booking)


@pytest.fixture
def flow(chain_settings, db):
    return Flow(chain_settings)


def scan(**kwargs) -> ScanReport:
    report = scanner.scan_chain(max_seconds=60, **kwargs)
    assert not report.skipped
    return report
