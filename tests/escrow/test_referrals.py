"""Referrals are server-side (issue 15, item 1): an inviter gets an invite code, a wallet redeems
one code once, before its first booking, and is bound to that inviter for good; a booking's
inviter comes only from that binding. Nobody names an inviter in a request, so a customer
cannot hand half the platform fee to a second wallet of its own."""
from __future__ import annotations

import pytest

from escrow.models import Booking, InviteCode, Referral

from .helpers import future_iso, wallet, wallet_client

pytestmark = pytest.mark.django_db

INVITE_CODES = "/api/referrals/invite-codes/"
REDEEM = "/api/referrals/redeem/"


def _create_body(provider, **extra):
    return {"provider": provider.address, "amount": "100", "scheduled_at": future_iso(), **extra}


def _invite_code(account) -> str:
    response = wallet_client(account).post(INVITE_CODES, format="json")
    assert response.status_code == 201, response.content
    return response.json()["code"]


# -- the attack: a customer names its own second wallet --------------------------------------
def test_a_customer_cannot_name_its_own_second_wallet_as_inviter(clients, provider):
    second_wallet = wallet("customer's second wallet")
    response = clients["customer"].post(
        "/api/bookings/", _create_body(provider, inviter=second_wallet.address), format="json"
    )
    assert response.status_code == 400, response.content
    [reason] = response.json()["inviter"]
    assert "invite code" in reason
    assert not Booking.objects.exists()


def test_a_wallet_that_has_booked_cannot_bind_an_inviter_afterwards(clients, customer, provider):
    """Redeeming later would hand the fee of every later booking to a wallet chosen after the fact."""
    assert clients["customer"].post("/api/bookings/", _create_body(provider), format="json").status_code == 201
    code = _invite_code(wallet("customer's second wallet"))
    response = clients["customer"].post(REDEEM, {"code": code}, format="json")
    assert response.status_code == 409, response.content
    assert "first booking" in response.json()["detail"]
    assert not Referral.objects.exists()


def test_a_wallet_cannot_redeem_its_own_code(clients, customer):
    code = _invite_code(customer)
    response = clients["customer"].post(REDEEM, {"code": code}, format="json")
    assert response.status_code == 400, response.content
    assert "your own" in response.json()["code"][0]
    assert not Referral.objects.exists()


# -- the legitimate way ------------------------------------------------------------------------
def test_redeemed_code_binds_the_inviter_to_every_booking_of_the_wallet(clients, customer, provider, inviter):
    code = _invite_code(inviter)
    redeemed = clients["customer"].post(REDEEM, {"code": code.lower()}, format="json")
    assert redeemed.status_code == 201, redeemed.content
    assert redeemed.json()["inviter"] == inviter.address and redeemed.json()["code"] == code
    for _ in range(2):
        booking = clients["customer"].post("/api/bookings/", _create_body(provider), format="json").json()
        assert booking["inviter"] == inviter.address
        assert (booking["platform_fee_rate"], booking["inviter_fee_rate"]) == (500, 500)
    listed = wallet_client(inviter).get(INVITE_CODES).json()
    assert listed == [{"code": code, "created_at": listed[0]["created_at"], "redemptions": 1}]


def test_a_binding_is_for_good_one_code_per_wallet(clients, customer, inviter):
    assert clients["customer"].post(REDEEM, {"code": _invite_code(inviter)}, format="json").status_code == 201
    other = _invite_code(wallet("another inviter"))
    response = clients["customer"].post(REDEEM, {"code": other}, format="json")
    assert response.status_code == 409, response.content
    assert "already" in response.json()["detail"]
    assert Referral.objects.get().invite_code.inviter_address == inviter.address


def test_an_inviter_who_is_the_provider_gets_no_inviter_fee(clients, customer, provider):
    """The provider would take the inviter's share on top of its own: the platform keeps its 10 %."""
    assert clients["customer"].post(REDEEM, {"code": _invite_code(provider)}, format="json").status_code == 201
    booking = clients["customer"].post("/api/bookings/", _create_body(provider), format="json").json()
    assert booking["inviter"] is None
    assert (booking["platform_fee_rate"], booking["inviter_fee_rate"]) == (1000, 0)


def test_unknown_and_malformed_codes(clients):
    unknown = clients["customer"].post(REDEEM, {"code": "ABCDEFGHJK"}, format="json")
    assert unknown.status_code == 404 and "invite code" in unknown.json()["detail"]
    for bad in ("short", "ABCDEFGHJ0", 1234567890, None, "ABCDEFGHJKL"):
        response = clients["customer"].post(REDEEM, {"code": bad}, format="json")
        assert response.status_code == 400, (bad, response.content)
        assert response.json()["code"]


def test_invite_codes_per_wallet_are_capped(settings, clients, inviter):
    settings.MAX_INVITE_CODES_PER_WALLET = 2
    client = wallet_client(inviter)
    assert [client.post(INVITE_CODES, format="json").status_code for _ in range(2)] == [201, 201]
    refused = client.post(INVITE_CODES, format="json")
    assert refused.status_code == 409, refused.content
    assert "2 invite codes" in refused.json()["detail"]
    assert InviteCode.objects.count() == 2
    assert len(client.get(INVITE_CODES).json()) == 2


def test_referral_endpoints_are_for_signed_in_wallets(clients):
    for name in ("anonymous", "staff"):
        assert clients[name].get(INVITE_CODES).status_code == 401
        assert clients[name].post(INVITE_CODES, format="json").status_code == 401
        assert clients[name].post(REDEEM, {"code": "ABCDEFGHJK"}, format="json").status_code == 401


def test_invite_code_creation_takes_no_fields(clients):
    response = clients["customer"].post(INVITE_CODES, {"inviter": wallet("x").address}, format="json")
    assert response.status_code == 400 and "inviter" in response.json()
    assert not InviteCode.objects.exists()


# -- item 5: a contract of ours is never an inviter -------------------------------------------
@pytest.mark.parametrize("contract", ["ESCROW_CONTRACT_ADDRESS", "USDC_CONTRACT_ADDRESS"])
def test_our_contracts_cannot_obtain_invite_codes(settings, contract):
    client = wallet_client(wallet("contract"))
    setattr(settings, contract, wallet("contract").address)
    response = client.post(INVITE_CODES, format="json")
    assert response.status_code == 403, response.content
    assert "contract" in response.json()["detail"]
    assert not InviteCode.objects.exists()


@pytest.mark.parametrize("contract", ["ESCROW_CONTRACT_ADDRESS", "USDC_CONTRACT_ADDRESS"])
def test_a_code_whose_inviter_is_one_of_our_contracts_cannot_be_redeemed(settings, clients, contract):
    code = _invite_code(wallet("later configured as a contract"))
    setattr(settings, contract, wallet("later configured as a contract").address.lower())
    response = clients["customer"].post(REDEEM, {"code": code}, format="json")
    assert response.status_code == 400, response.content
    assert "contract" in response.json()["code"][0]
    assert not Referral.objects.exists()
