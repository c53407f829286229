"""`GET /api/earnings/` and the console's fee ledger CSV against real payouts on anvil (issue 16, item 4).

The provider and the inviter are fresh addresses: their USDC balances on chain after the flows are
exactly what the escrow paid them, so the API's figures are checked against the token, not against
the code that computed them.
"""
from __future__ import annotations

import csv
import io
from datetime import UTC, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from chain_events import scanner
from common.eth import format_amount
from escrow import referrals, services
from escrow.models import Booking, PlatformFee, ProviderEarnings
from tests.escrow.helpers import wallet, wallet_client

pytestmark = [pytest.mark.django_db, pytest.mark.chain]


@pytest.fixture
def settled(chain_settings):
    """Four bookings settled on chain for provider P and inviter I (fresh wallets), applied by the scanner:
    A (P, invited by I) completed; B (P, invited by I) cancelled late by its customer (P, I and the
    platform get parts); C (P, no inviter) completed, an odd amount; D (another provider, invited by I)
    completed. Plus E (P) paid and not settled: no earnings yet."""
    chain = chain_settings
    provider, inviter = wallet("earnings-provider"), wallet("earnings-inviter")
    invited, plain = chain.accounts.customers[2], chain.accounts.customers[3]
    referrals.redeem_invite_code(invited.address, referrals.create_invite_code(inviter.address))
    fee_recipient_before = chain.usdc_balance(chain.accounts.fee_recipient.address)

    def booking(customer, amount, provider_address=provider.address, *, hours_ahead=72):
        made = services.create_booking(
            customer=customer.address, provider=provider_address, amount=amount,
            scheduled_at=timezone.now() + timedelta(hours=hours_ahead), actor="test",
        )
        auth = services.issue_payment_authorization(made, actor="test")
        chain.pay_booking(auth.message, auth.signature, customer.address)
        return made

    a = booking(invited, "100.50")
    chain.complete_service(a.chain_booking_id, invited.address)
    b = booking(invited, "40.000001", hours_ahead=1)  # inside the late tier: no refund
    assert not scanner.scan_chain().errors  # cancelling needs the booking PAID here
    auth, _terms = services.request_cancellation(
        Booking.objects.get(pk=b.pk), requested_by="customer", reason="late", actor="test"
    )
    chain.cancel_booking(auth.message, auth.signature, invited.address)
    c = booking(plain, "7.333333")
    chain.complete_service(c.chain_booking_id, plain.address)
    d = booking(invited, "12.00", wallet("earnings-other-provider").address)
    chain.complete_service(d.chain_booking_id, invited.address)
    booking(plain, "3.00")
    report = scanner.scan_chain()
    assert not report.errors, report.errors
    return {
        "provider": provider, "inviter": inviter, "bookings": (a, b, c, d),
        "fees_paid": chain.usdc_balance(chain.accounts.fee_recipient.address) - fee_recipient_before,
        "chain": chain,
    }


def test_a_provider_and_an_inviter_see_exactly_what_the_escrow_paid_them(settled):
    chain, provider, inviter = settled["chain"], settled["provider"], settled["inviter"]
    a, b, c, d = (Booking.objects.get(pk=x.pk) for x in settled["bookings"])
    assert (a.status, b.status, c.status, d.status) == ("COMPLETED", "CANCELLED", "COMPLETED", "COMPLETED")
    paid_to_provider = chain.usdc_balance(provider.address)
    paid_to_inviter = chain.usdc_balance(inviter.address)
    assert paid_to_provider > 0 and paid_to_inviter > 0

    body = wallet_client(provider).get("/api/earnings/").json()
    mine = body["provider"]
    assert mine["total"] == {"amount": str(paid_to_provider), "amount_decimal": format_amount(paid_to_provider)}
    recorded = ProviderEarnings.objects.get(provider_address=provider.address)
    assert mine["from_completions"]["amount"] == str(recorded.total_earned)  # the chain sync's own ledger
    cancelled_part = int(b.chain_data["cancellation"]["providerAmount"])
    assert cancelled_part > 0
    assert mine["from_cancellations"]["amount"] == str(cancelled_part)
    assert (mine["bookings"], mine["services_completed"]) == (3, 2)
    assert body["inviter"] == {"total": {"amount": "0", "amount_decimal": "0.000000"}, "bookings": 0}
    assert body["count"] == 3 and body["next"] is None
    rows = {row["booking"]: row for row in body["results"]}
    assert set(rows) == {str(a.uuid), str(b.uuid), str(c.uuid)}
    assert sum(int(row["as_provider"]["amount"]) for row in rows.values()) == paid_to_provider
    assert rows[str(b.uuid)]["settled_by"] == "cancellation"
    assert rows[str(b.uuid)]["tx_hash"] == b.cancellation_tx_hash
    assert rows[str(c.uuid)]["as_inviter"] is None
    fee_c = PlatformFee.objects.get(booking=c)
    assert rows[str(c.uuid)]["as_provider"]["amount"] == str(fee_c.provider_amount)

    body = wallet_client(inviter).get("/api/earnings").json()  # without the slash too
    assert body["inviter"]["total"]["amount"] == str(paid_to_inviter)
    assert body["inviter"]["bookings"] == 3  # A, B, D
    assert body["provider"]["total"]["amount"] == "0"
    assert {row["booking"] for row in body["results"]} == {str(a.uuid), str(b.uuid), str(d.uuid)}
    assert all(row["as_provider"] is None for row in body["results"])

    stranger = wallet_client(wallet("earnings-stranger")).get("/api/earnings/").json()
    assert (stranger["count"], stranger["provider"]["total"]["amount"]) == (0, "0")
    assert APIClient().get("/api/earnings/").status_code == 401


def test_staff_see_the_fee_ledger_per_day_and_export_it_as_csv(settled, django_user_model):
    staff = django_user_model.objects.create_user("ledger-staff", password="x", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    fees = list(PlatformFee.objects.all())
    platform = sum(int(f.platform_amount) for f in fees)
    inviter = sum(int(f.inviter_amount) for f in fees)
    assert platform == settled["fees_paid"]  # what reached the fee recipient on chain

    body = client.get("/api/earnings/").json()
    assert body["totals"]["platform"] == {"amount": str(platform), "amount_decimal": format_amount(platform)}
    assert body["totals"]["inviter"]["amount"] == str(inviter)
    assert body["totals"]["bookings"] == len(fees) == 4
    assert body["count"] == 1
    (today,) = body["results"]
    assert today["day"] == timezone.now().astimezone(UTC).date().isoformat()
    assert (today["platform"], today["bookings"]) == (body["totals"]["platform"], 4)

    response = client.get("/admin/escrow/platformfee/export.csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 4
    assert sum(int(row["platform_amount"]) for row in rows) == platform
    assert sum(int(row["inviter_amount"]) for row in rows) == inviter
    assert {row["booking"] for row in rows} == {str(f.booking.uuid) for f in fees}
    assert all(row["platform_usdc"] == format_amount(int(row["platform_amount"])) for row in rows)
    assert "export.csv" in client.get("/admin/escrow/platformfee/").content.decode()

    client.logout()
    assert client.get("/admin/escrow/platformfee/export.csv").status_code == 302  # to the console sign-in
