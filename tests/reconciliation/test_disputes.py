"""Disputes: the customer contests a paid booking before its payout (API), the booking leaves
auto-complete and shows in the console, an operator resolves it with any split of the amount
(the console's split page, sent by the worker with the contract's resolveDispute), and both
parties see the dispute and its outcome in the API."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from bookme.console import attention_summary
from common.console import OPERATORS_GROUP
from contracts.artifacts import STATUS_CANCELLED
from escrow.models import BookingStatus, PlatformFee
from escrow.money import CancellationSplit
from escrow.referrals import create_invite_code, redeem_invite_code
from escrow.services import create_booking, request_cancellation
from reconciliation import disputes
from reconciliation.models import Dispute, DisputeStatus, SentTransaction, TxPurpose, TxStatus
from reconciliation.operations import (
    ActionRefused,
    auto_complete_bookings,
    auto_complete_candidates,
    check_operator_completion,
)
from reconciliation.transactions import TransactionRejected
from tests.console.test_console_sends import history, run_as_the_worker, take_queued_tasks
from tests.escrow.helpers import wallet, wallet_client

from .conftest import paid_past_service, scan_to_head

S = BookingStatus
CASE = {
    "reason": "The provider never showed up.",
    "evidence": "Waited 40 minutes at the door; messages unanswered.",
    "links": ["https://photos.example/door.jpg", "https://chat.example/thread/77"],
}
DECISION = "No-show confirmed by the provider's own messages; the platform keeps its fee."


def _url(booking) -> str:
    return f"/api/bookings/{booking.uuid}/dispute/"


@pytest.fixture
def parties():
    return {"customer": wallet("dispute customer"), "provider": wallet("dispute provider")}


@pytest.fixture
def api(parties, django_user_model):
    staff = django_user_model.objects.create_user("sam", password="x", is_staff=True)
    staff_client = Client()
    staff_client.force_login(staff)
    return {
        "customer": wallet_client(parties["customer"]),
        "provider": wallet_client(parties["provider"]),
        "stranger": wallet_client(wallet("dispute stranger")),
        "staff": staff_client,
    }


@pytest.fixture
def operator_client(django_user_model):
    group, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
    user = django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    user.groups.add(group)
    client = Client()
    client.force_login(user)
    return client


def _paid(parties, *, hours_ago: float = 10, amount: str = "100.00"):
    return paid_past_service(parties["customer"].address, parties["provider"].address,
                             hours_ago=hours_ago, amount=amount)


# -- the customer opens one; both parties and staff see it -------------------------------------------
@pytest.mark.django_db
def test_a_dispute_takes_the_booking_out_of_auto_complete_and_into_the_console(api, parties):
    booking = _paid(parties)
    assert booking in auto_complete_candidates(timezone.now())

    response = api["customer"].post(_url(booking), CASE, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["booking"] == str(booking.uuid)
    assert (body["status"], body["outcome"], body["booking_status"], body["decision"]) == (
        "OPEN", "pending", "PAID", None)
    assert (body["reason"], body["evidence"], body["links"]) == (CASE["reason"], CASE["evidence"], CASE["links"])
    assert booking not in auto_complete_candidates(timezone.now() + timedelta(days=30))
    with pytest.raises(ActionRefused, match="disputed"):
        check_operator_completion(booking)
    [line] = [item for item in attention_summary().items if item.label.startswith("Open disputes")]
    assert (line.count, line.severity) == (1, "warning")
    assert line.url.endswith("/admin/reconciliation/dispute/?open=1")
    for role in ("customer", "provider", "staff"):
        seen = api[role].get(_url(booking))
        assert seen.status_code == 200, (role, seen.content)
        assert seen.json() == body
    assert api["stranger"].get(_url(booking)).status_code == 404


@pytest.mark.django_db
def test_only_the_customer_opens_one(api, parties):
    booking = _paid(parties)
    for role in ("provider", "staff"):
        response = api[role].post(_url(booking), CASE, format="json")
        assert response.status_code == 403, (role, response.content)
        assert "Only the booking's customer can dispute it" in response.json()["detail"]
    assert api["stranger"].post(_url(booking), CASE, format="json").status_code == 404
    assert api["customer"].get(_url(booking)).json() == {"detail": "No dispute was opened on this booking."}
    assert not Dispute.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body,field,why",
    [
        ({"reason": "   "}, "reason", "may not be blank"),
        ({"reason": "x" * 501}, "reason", "no more than 500"),
        ({"reason": "x", "links": ["javascript:alert(1)"]}, "links", "item 1: Must be an http(s) URL"),
        ({"reason": "x", "links": ["https://ok.example", False]}, "links", "item 2: Not a valid string."),
        ({"reason": "x", "links": ["https://a.example/with space"]}, "links", "http(s) URL"),
        ({"reason": "x", "links": [f"https://a.example/{i}" for i in range(11)]}, "links", "no more than 10"),
        ({"reason": "x", "evidence": "y" * 4001}, "evidence", "no more than 4000"),
        ({"reason": "x", "split": {"customer": "100"}}, "split", "Unknown field"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, parties, body, field, why):
    booking = _paid(parties)
    response = api["customer"].post(_url(booking), body, format="json")
    assert response.status_code == 400, response.content
    reasons = response.json()[field]
    assert isinstance(reasons, list) and all(isinstance(reason, str) for reason in reasons)  # {field: [reason]}
    assert why in " ".join(reasons)
    assert not Dispute.objects.exists()


@pytest.mark.django_db
def test_what_cannot_be_disputed_is_a_409_saying_why(api, parties):
    unpaid = create_booking(customer=parties["customer"].address, provider=parties["provider"].address,
                            amount="5", scheduled_at=timezone.now() + timedelta(days=1))
    response = api["customer"].post(_url(unpaid), CASE, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "This booking cannot be disputed: the booking is PENDING_PAYMENT, not PAID.",
                               "status": "PENDING_PAYMENT"}

    disputed = _paid(parties)
    assert api["customer"].post(_url(disputed), CASE, format="json").status_code == 201
    again = api["customer"].post(_url(disputed), CASE, format="json")
    assert again.status_code == 409 and "A dispute was already opened on this booking" in again.json()["detail"]

    on_its_way = _paid(parties)
    SentTransaction.objects.create(purpose=TxPurpose.OPERATOR_COMPLETE, booking=on_its_way, chain_id=31337,
                                   from_address="0x" + "22" * 20, to_address="0x" + "33" * 20, data="0x",
                                   status=TxStatus.SUBMITTED)
    late = api["customer"].post(_url(on_its_way), CASE, format="json")
    assert late.status_code == 409
    assert "operator_complete transaction was already sent" in late.json()["detail"]
    assert Dispute.objects.count() == 1


@pytest.mark.django_db
def test_a_dispute_waits_for_a_cancellation_request_to_lapse(api, parties):
    """The customer asked to cancel: while those terms can still be executed the customer holds a
    way out and a payout could race the dispute, so it is refused; once they lapsed, it opens."""
    booking = _paid(parties)
    request_cancellation(booking, requested_by="customer", reason="maybe not")
    refused = api["customer"].post(_url(booking), CASE, format="json")
    assert refused.status_code == 409
    assert "a cancellation authorization can still be executed until" in refused.json()["detail"]
    assert refused.json()["status"] == "PENDING_CANCELLATION"

    lapsed = _paid(parties)
    request_cancellation(lapsed, requested_by="customer", reason="maybe not", now=timezone.now() - timedelta(hours=1))
    opened = api["customer"].post(_url(lapsed), CASE, format="json")
    assert opened.status_code == 201, opened.content
    assert opened.json()["booking_status"] == "PENDING_CANCELLATION"


# -- an operator resolves it --------------------------------------------------------------------------
def test_a_split_must_sum_to_the_amount_to_the_base_unit_with_no_inviter_part_without_an_inviter():
    disputes.check_split(CancellationSplit(1, 97, 1, 1), amount=100, has_inviter=True)
    with pytest.raises(ActionRefused, match=r"sum to 0.000099 USDC \(99 base units\)"):
        disputes.check_split(CancellationSplit(1, 96, 1, 1), amount=100, has_inviter=True)
    with pytest.raises(ActionRefused, match="no inviter"):
        disputes.check_split(CancellationSplit(1, 97, 1, 1), amount=100, has_inviter=False)
    with pytest.raises(ActionRefused, match="not negative"):
        disputes.check_split(CancellationSplit(101, -1, 0, 0), amount=100, has_inviter=False)


def _resolve_page(booking_dispute) -> str:
    return reverse("admin:reconciliation_dispute_resolve", args=[booking_dispute.pk])


@pytest.mark.django_db
def test_the_split_page_shows_the_case_and_refuses_a_split_that_does_not_sum_up(api, parties, operator_client):
    booking = _paid(parties, amount="100.00")
    api["customer"].post(_url(booking), CASE, format="json")
    dispute = Dispute.objects.get()

    page = operator_client.get(_resolve_page(dispute))

    assert page.status_code == 200
    content = page.content.decode()
    for text in (CASE["reason"], CASE["evidence"], *CASE["links"], "100.000000 USDC", 'name="customer"',
                 'name="provider"', 'name="platform"', 'name="inviter"', 'name="reason"'):
        assert text in content, text
    assert '<a href="https://photos.example' not in content  # links are shown, never made clickable
    wrong = operator_client.post(_resolve_page(dispute), {"customer": "60", "provider": "30", "platform": "9.999999",
                                                          "reason": DECISION})
    assert wrong.status_code == 200
    assert "the parts sum to 99.999999 USDC (99999999 base units)" in wrong.content.decode()
    too_fine = operator_client.post(_resolve_page(dispute), {"customer": "60.0000001", "provider": "30",
                                                             "platform": "10", "reason": DECISION})
    assert "Ensure that there are no more than 6 decimal places" in too_fine.content.decode()
    no_reason = operator_client.post(_resolve_page(dispute), {"customer": "60", "provider": "30", "platform": "10"})
    assert "This field is required" in no_reason.content.decode()
    assert take_queued_tasks() == []
    dispute.refresh_from_db()
    assert dispute.status == DisputeStatus.OPEN


@pytest.mark.django_db
def test_read_only_staff_see_disputes_but_cannot_resolve_them(api, parties, django_user_model):
    booking = _paid(parties)
    api["customer"].post(_url(booking), CASE, format="json")
    dispute = Dispute.objects.get()
    reader = Client()
    reader.force_login(django_user_model.objects.create_user("rory", password="x", is_staff=True))
    assert reader.get(reverse("admin:reconciliation_dispute_changelist") + "?open=1").status_code == 200
    detail = reader.get(reverse("admin:reconciliation_dispute_change", args=[dispute.pk]))
    assert detail.status_code == 200 and CASE["evidence"] in detail.content.decode()
    booking_page = reader.get(reverse("admin:escrow_booking_change", args=[booking.pk]))
    assert booking_page.status_code == 200 and CASE["reason"] in booking_page.content.decode()
    assert reader.get(_resolve_page(dispute)).status_code == 403
    assert reader.post(_resolve_page(dispute), {"customer": "100", "provider": "0", "platform": "0",
                                                "reason": DECISION}).status_code == 403
    assert take_queued_tasks() == []


# -- end to end on the chain ------------------------------------------------------------------------------
@pytest.fixture
def invited_customer(customer):
    """The reconciliation customer (funded on anvil), bound to an inviter by an invite code."""
    inviter = wallet("dispute inviter")
    redeem_invite_code(customer.address, create_invite_code(inviter.address))
    return inviter


@pytest.mark.chain
@pytest.mark.django_db
def test_a_dispute_is_resolved_on_chain_with_the_operators_split_and_both_parties_see_it(
    chain_settings, settings, customer, provider, invited_customer, make_booking, pay, operator_client
):
    chain = chain_settings
    inviter = invited_customer
    booking = make_booking(amount="100.00", scheduled_at=timezone.now() + timedelta(seconds=30))
    assert booking.inviter_address == inviter.address
    pay(booking)
    scan_to_head(chain)
    opened = wallet_client(customer).post(_url(booking), CASE, format="json")
    assert opened.status_code == 201, opened.content
    chain.increase_time(3 * 3600)
    assert auto_complete_bookings(now=timezone.now() + timedelta(hours=3))["sent"] == 0  # disputed: not paid out

    settings.OPERATOR_PRIVATE_KEY = None  # the web process holds no operator key
    dispute = Dispute.objects.get()
    response = operator_client.post(_resolve_page(dispute), {
        "customer": "60", "provider": "30.5", "platform": "7", "inviter": "2.5", "reason": DECISION})
    assert response.status_code == 302, response.content.decode()
    assert not SentTransaction.objects.exists()
    queued = take_queued_tasks()
    parts = ["60000000", "30500000", "7000000", "2500000"]
    assert queued == [("reconciliation.send_dispute_resolution", [dispute.pk, "staff:olivia", DECISION, parts], {})]
    who = [customer.address, provider.address, chain.accounts.fee_recipient.address, inviter.address, chain.escrow]
    before = [chain.usdc_balance(address) for address in who]

    [outcome] = run_as_the_worker(settings, queued)

    sent = SentTransaction.objects.get(booking=booking)
    assert outcome == {"done": True, "tx_hash": sent.tx_hash, "status": TxStatus.MINED}
    assert (sent.purpose, sent.actor, sent.reason) == (TxPurpose.DISPUTE_RESOLUTION, "staff:olivia", DECISION)
    after = [chain.usdc_balance(address) for address in who]
    assert [a - b for a, b in zip(after, before, strict=True)] == [60_000_000, 30_500_000, 7_000_000, 2_500_000,
                                                                   -100_000_000]
    assert chain.get_booking(booking.chain_booking_id)[-1] == STATUS_CANCELLED
    assert history(dispute)[-1] == f"Resolve dispute sent by the worker: tx {sent.tx_hash} (MINED)"

    scan_to_head(chain)
    booking.refresh_from_db()
    assert (booking.status, booking.cancellation_tx_hash) == (S.CANCELLED, sent.tx_hash)
    fee = PlatformFee.objects.get(booking=booking)
    assert (fee.platform_amount, fee.inviter_amount, fee.provider_amount) == (7_000_000, 2_500_000, 30_500_000)
    for party in (customer, provider):
        seen = wallet_client(party).get(_url(booking)).json()
        assert (seen["status"], seen["outcome"], seen["booking_status"]) == ("DECIDED", "resolved", "CANCELLED")
        assert seen["decision"] == {
            "customer": "60000000", "provider": "30500000", "platform": "7000000", "inviter": "2500000",
            "reason": DECISION, "decided_at": seen["decision"]["decided_at"], "tx_hash": sent.tx_hash,
        }
    assert "decided_by" not in seen and "olivia" not in str(seen)  # staff names stay in the console
    [line] = [item for item in attention_summary().items if item.label.startswith("Open disputes")]
    assert (line.count, line.severity) == (0, "ok")


@pytest.mark.chain
@pytest.mark.django_db
def test_a_resolution_the_paused_contract_refuses_is_recorded_and_can_be_decided_again(
    chain_settings, settings, customer, make_booking, pay
):
    chain = chain_settings
    booking = make_booking(amount="10.00")
    pay(booking)
    scan_to_head(chain)
    booking.refresh_from_db()
    dispute = disputes.open_dispute(booking, opened_by=customer.address, reason="damaged goods")
    chain.transact(chain.escrow_contract.functions.pause(), chain.accounts.operator.address)
    refund = CancellationSplit(customer=10_000_000, provider=0, platform=0, inviter=0)

    with pytest.raises(TransactionRejected, match="EnforcedPause"):
        disputes.resolve_dispute(dispute, split=refund, actor="staff:olivia", reason=DECISION)

    dispute.refresh_from_db()
    assert dispute.status == DisputeStatus.DECIDED  # the decision stands; its send failed
    assert SentTransaction.objects.get(booking=booking).status == TxStatus.FAILED
    assert dispute in disputes.unsettled_disputes()
    chain.transact(chain.escrow_contract.functions.unpause(), chain.accounts.deployer.address)
    record = disputes.resolve_dispute(dispute, split=refund, actor="staff:olivia", reason=DECISION)
    assert record.status == TxStatus.MINED
    assert chain.get_booking(booking.chain_booking_id)[-1] == STATUS_CANCELLED
    with pytest.raises(ActionRefused, match="nothing to pay out: the chain shows CANCELLED"):
        disputes.resolve_dispute(dispute, split=refund, actor="staff:olivia", reason=DECISION)
