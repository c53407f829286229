"""What the console shows: the attention panel, the booking list's filters and search, the
booking detail (history, chain events, signatures, fees) and the sync cursor's lag."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from bookme.health import refresh_chain_health
from chain_events.models import SyncCursor
from escrow.models import Booking, BookingStatus, PlatformFee
from escrow.signing import sign_payment_authorization
from tests.escrow.helpers import wallet

from .conftest import create_dead_letter, make_booking

pytestmark = pytest.mark.django_db


def listed(client, name: str, query: str = "") -> list:
    response = client.get(reverse(f"admin:{name}_changelist") + query)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_index_shows_what_needs_attention(clients, booking):
    create_dead_letter()
    Booking.objects.filter(pk=booking.pk).update(status_changed_at=timezone.now() - timedelta(hours=3))
    SyncCursor.objects.create(chain_id=31337, contract_address="0x" + "11" * 20, last_block=100, head_block=130,
                              last_scan_at=timezone.now())
    for role in ("operator", "reader"):
        response = clients[role].get(reverse("admin:index"))
        assert response.status_code == 200
        items = {item.label: item for item in response.context["attention"].items}
        assert items["Dead-lettered chain events"].count == 1
        assert items["Dead-lettered chain events"].severity == "critical"
        assert items["Bookings stuck over 1 h"].count == 1
        assert items["Sync lag (chain 31337), blocks"].count == 30
        assert items["Open orphans (paid on chain, unknown here)"].count == 0
        assert b"console-attention" in response.content
    assert b"only the operators group may act" in clients["reader"].get(reverse("admin:index")).content


def test_index_says_why_the_scanner_fails(clients):
    SyncCursor.objects.create(chain_id=31337, contract_address="0x" + "11" * 20, last_block=100, head_block=100,
                              last_scan_at=timezone.now() - timedelta(minutes=5),
                              last_error="RpcInconsistentAnswer: incomplete answer", last_error_at=timezone.now())
    items = {item.label: item for item in clients["reader"].get(reverse("admin:index")).context["attention"].items}
    sync = items["Sync lag (chain 31337), blocks"]
    assert sync.severity == "critical" and "the last pass failed: RpcInconsistentAnswer" in sync.detail


@pytest.mark.chain
def test_paused_in_the_console_and_metrics_is_the_contracts_own_state(chain_settings, clients):
    """Paused by the backend, then unpaused by the owner outside it (the usual multisig path):
    the console and the gauge follow paused() on chain, not the backend's last pause record."""
    from django.core.cache import cache

    from reconciliation.operations import pause_contract
    from reconciliation.selectors import PAUSED_CACHE_KEY

    from .test_metrics import sample, scrape

    def paused_item():
        refresh_chain_health()  # the worker's task: the console reads its entry, never the node
        response = clients["operator"].get(reverse("admin:index"))
        return {item.label: item for item in response.context["attention"].items}.get("Contract paused")

    assert paused_item() is None and sample(scrape(), "bookme_contract_paused") == 0
    pause_contract(actor="staff:olivia", reason="incident")
    item = paused_item()
    assert (item.count, item.severity) == ("yes", "critical") and "staff:olivia" in item.detail
    assert sample(scrape(), "bookme_contract_paused") == 1
    owner = chain_settings.accounts.deployer.address
    chain_settings.transact(chain_settings.escrow_contract.functions.unpause(), owner)
    cache.delete(PAUSED_CACHE_KEY)  # past CONTRACT_PAUSED_CACHE_SECONDS
    assert paused_item() is None and sample(scrape(), "bookme_contract_paused") == 0


def test_index_is_login_only(clients):
    response = clients["anonymous"].get(reverse("admin:index"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_stuck_filter_by_age(clients):
    customer = wallet("console-customer").address
    fresh = make_booking(customer)
    two_hours = make_booking(customer)
    two_days = make_booking(customer)
    finished = make_booking(customer)
    now = timezone.now()
    Booking.objects.filter(pk=two_hours.pk).update(status_changed_at=now - timedelta(hours=2))
    Booking.objects.filter(pk=two_days.pk).update(status_changed_at=now - timedelta(days=2))
    Booking.objects.filter(pk=finished.pk).update(
        status=BookingStatus.CANCELLED, status_changed_at=now - timedelta(days=3)
    )
    # PAID long after its service window: auto-complete should have happened.
    overdue = make_booking(customer, scheduled_at=now + timedelta(days=1))
    Booking.objects.filter(pk=overdue.pk).update(status=BookingStatus.PAID, scheduled_at=now - timedelta(hours=5))
    stuck = {b.pk for b in listed(clients["reader"], "escrow_booking", "?stuck=1h")}
    assert stuck == {two_hours.pk, two_days.pk, overdue.pk}
    assert {b.pk for b in listed(clients["reader"], "escrow_booking", "?stuck=24h")} == {two_days.pk}
    assert fresh.pk not in {b.pk for b in listed(clients["reader"], "escrow_booking", "?stuck=15m")}
    assert {b.pk for b in listed(clients["reader"], "escrow_booking", "?status__exact=CANCELLED")} == {finished.pk}


def test_booking_search_by_uuid_wallet_chain_id_and_tx_hash(clients, booking):
    other = make_booking(wallet("someone-else").address)
    tx_hash = "0x" + "5a" * 32
    Booking.objects.filter(pk=booking.pk).update(payment_tx_hash=tx_hash)
    refund_event = create_dead_letter(chain_booking_id=booking.chain_booking_id)
    for term in (str(booking.uuid), booking.customer_address, booking.customer_address.lower(),
                 booking.chain_booking_id, tx_hash, refund_event.tx_hash):
        assert [b.pk for b in listed(clients["reader"], "escrow_booking", f"?q={term}")] == [booking.pk], term
    assert other.pk in {b.pk for b in listed(clients["reader"], "escrow_booking", "?q=")}


def test_booking_detail_shows_history_events_signatures_and_fees(clients, booking):
    sign_payment_authorization(booking)
    event = create_dead_letter(chain_booking_id=booking.chain_booking_id)
    PlatformFee.objects.create(booking=booking, platform_amount=2_500_000, provider_amount=22_500_000,
                               tx_hash="0x" + "77" * 32)
    response = clients["reader"].get(reverse("admin:escrow_booking_change", args=[booking.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    lowered = page.lower()
    assert "status history" in lowered and "PENDING_PAYMENT" in page
    assert reverse("admin:chain_events_chainevent_change", args=[event.pk]) in page  # chain events
    assert "signatures (eip-712 authorizations issued)" in lowered and "payment" in page
    assert "fees" in lowered and "2.500000 USDC" in page  # the platform fee
    assert 'name="_save"' not in page  # read-only: no save button


def test_sync_cursor_page_shows_lag_and_last_scan(clients):
    SyncCursor.objects.create(chain_id=31337, contract_address="0x" + "11" * 20, last_block=100, head_block=112,
                              last_scan_at=timezone.now() - timedelta(seconds=30))
    response = clients["reader"].get(reverse("admin:chain_events_synccursor_changelist"))
    page = response.content.decode()
    assert "lag (blocks)" in page.lower() or "Lag (blocks)" in page
    assert ">12<" in page and "30 s" in page


def test_read_only_pages_for_nonces_fees_earnings_and_transactions(clients, booking):
    sign_payment_authorization(booking)
    for name in ("escrow_signaturenonce", "escrow_platformfee", "escrow_providerearnings",
                 "reconciliation_senttransaction", "reconciliation_reconciliationreport",
                 "reconciliation_emergencypause", "reconciliation_operatornonce", "chain_events_orphan"):
        for role in ("reader", "operator"):
            response = clients[role].get(reverse(f"admin:{name}_changelist"))
            assert response.status_code == 200, name
            assert reverse(f"admin:{name}_changelist") + "add/" not in response.content.decode(), name
    nonces = reverse("admin:escrow_signaturenonce_changelist")
    assert clients["operator"].get(nonces + "?q=not-a-number").status_code == 200
