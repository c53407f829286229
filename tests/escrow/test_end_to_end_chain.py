"""End to end on a real anvil: a wallet signs in, books, fetches authorizations from the API and
uses them on the BookingEscrow contract exactly as a browser wallet would.

Shows what issue 3 asks: the API's BookingAuthorization is accepted by createAndPayBooking (USDC
moves into escrow); the same authorization again is refused by the contract (NonceAlreadyUsed);
an expired one is refused by the contract (AuthorizationExpired) and the API never re-serves it
(it signs a fresh one while the booking can still be paid, and refuses with 409 once it cannot);
the API's CancellationAuthorization is accepted by cancelBooking and pays out the policy's split
to the base unit.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from contracts.artifacts import decode_revert
from escrow.models import Booking, SignatureKind, SignatureNonce
from escrow.services import expire_unused_authorizations
from tests.chain_harness import booking_auth_tuple, cancellation_auth_tuple

from .helpers import sign_in

pytestmark = [pytest.mark.django_db, pytest.mark.chain]

TX_GAS = 500_000  # explicit gas: a transaction that reverts must still be mined (no estimation)


def _signature(authorization: dict) -> bytes:
    return bytes.fromhex(authorization["signature"][2:])


def _refusal(chain, contract_function, sender: str) -> tuple[str, tuple]:
    """What the contract says to this call: eth_call for the decoded custom error, then the real
    transaction, which must be mined and reverted (status 0)."""
    tx = contract_function.build_transaction({"from": sender, "gas": TX_GAS})
    answer = chain.w3.provider.make_request(
        "eth_call", [{"from": sender, "to": tx["to"], "data": tx["data"]}, "latest"],
    )
    error = answer.get("error")
    assert error, f"the contract accepted the call: {answer}"
    decoded = decode_revert(error.get("data"))
    assert decoded is not None, error
    tx_hash = chain.w3.eth.send_transaction({"from": sender, "to": tx["to"], "data": tx["data"], "gas": TX_GAS})
    assert chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 0
    return decoded


def _pay(chain, authorization: dict):
    return chain.escrow_contract.functions.createAndPayBooking(
        booking_auth_tuple(authorization["message"]), _signature(authorization)
    )


def _cancel(chain, authorization: dict):
    return chain.escrow_contract.functions.cancelBooking(
        cancellation_auth_tuple(authorization["message"]), _signature(authorization)
    )


def _submit(api, base: str, receipt) -> dict:
    """The client hands the mined transaction to the API (the chain-sync fast path applies it)."""
    tx_hash = "0x" + receipt["transactionHash"].hex().removeprefix("0x")
    response = api.post(base + "submit-transaction/", {"tx_hash": tx_hash}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _balances(chain, **accounts) -> dict[str, int]:
    return {name: chain.usdc_balance(address) for name, address in accounts.items()}


def test_pay_replay_expiry_and_cancellation_through_the_api_and_the_contract(chain_settings, settings):
    chain = chain_settings
    customer, provider, inviter = chain.accounts.customers[:3]
    settings.AUTHORIZATION_EXPIRY_GRACE_SECONDS = 0

    # -- sign in with Ethereum, redeem the inviter's code, and book (12 h ahead: a customer
    # cancelling gets the partial refund)
    code = sign_in(inviter, chain_id=chain.chain_id).post("/api/referrals/invite-codes/", format="json").json()["code"]
    api = sign_in(customer, chain_id=chain.chain_id)
    assert api.post("/api/referrals/redeem/", {"code": code}, format="json").status_code == 201
    response = api.post(
        "/api/bookings/",
        {
            "provider": provider.address.lower(),
            "amount": "100.50",
            "scheduled_at": (timezone.now() + timedelta(hours=12)).isoformat(),
            "description": "two-hour lesson",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    booking = response.json()
    base = f"/api/bookings/{booking['id']}/"
    assert booking["status"] == "PENDING_PAYMENT"
    assert (booking["amount"], booking["platform_fee_rate"], booking["inviter_fee_rate"]) == ("100500000", 500, 500)

    # -- an authorization that runs out unused: the contract refuses it once expired -------------
    settings.AUTHORIZATION_TTL_SECONDS = 10
    response = api.post(base + "authorize-payment/", format="json")
    assert response.status_code == 200, response.content
    stale = response.json()
    stale_expiry = int(stale["message"]["expiry"])
    assert stale["message"]["bookingId"] == booking["chain_booking_id"]
    assert stale["domain"]["verifyingContract"] == chain.escrow and stale["domain"]["chainId"] == chain.chain_id

    chain.increase_time(stale_expiry - chain.latest_timestamp() + 1)
    assert chain.latest_timestamp() > stale_expiry
    assert _refusal(chain, _pay(chain, stale), customer.address) == ("AuthorizationExpired", (stale_expiry,))

    # The housekeeping job (beat) sees every payment authorization of the booking expired.
    assert expire_unused_authorizations(now=datetime.fromtimestamp(stale_expiry + 1, tz=UTC))["expired"] == 1
    assert api.get(base).json()["status"] == "EXPIRED"

    # -- asked again, the API signs a fresh authorization; it never hands the stale one out again --
    # The API signs expiries from the wall clock; the session chain runs ahead of it by the
    # time earlier tests moved it (evm_increaseTime): an hour leaves room for both.
    settings.AUTHORIZATION_TTL_SECONDS = 3600
    response = api.post(base + "authorize-payment/", format="json")
    assert response.status_code == 200, response.content
    fresh = response.json()
    assert fresh["nonce"] != stale["nonce"] and fresh["signature"] != stale["signature"]
    assert int(fresh["message"]["expiry"]) > chain.latest_timestamp() + 200
    assert api.get(base).json()["status"] == "PENDING_PAYMENT"
    assert SignatureNonce.objects.filter(booking__uuid=booking["id"], kind=SignatureKind.PAYMENT).count() == 2

    # -- the customer's wallet pays with it: accepted, the USDC moves into escrow ------------------
    before = _balances(chain, customer=customer.address, escrow=chain.escrow)
    receipt = chain.transact(_pay(chain, fresh), customer.address)
    after = _balances(chain, customer=customer.address, escrow=chain.escrow)
    assert before["customer"] - after["customer"] == 100_500_000
    assert after["escrow"] - before["escrow"] == 100_500_000

    # -- the same authorization again: refused by the contract -------------------------------------
    assert _refusal(chain, _pay(chain, fresh), customer.address) == (
        "NonceAlreadyUsed",
        (int(fresh["nonce"]),),
    )
    assert chain.usdc_balance(chain.escrow) == after["escrow"]

    # -- the chain's word moves the booking to PAID: the wallet submits its transaction ------------
    assert _submit(api, base, receipt)["booking_status"] == "PAID"
    assert api.get(base).json()["status"] == "PAID"

    # Paid: the API refuses to sign another payment authorization, and signs nothing.
    response = api.post(base + "authorize-payment/", format="json")
    assert response.status_code == 409, response.content
    assert response.json()["status"] == "PAID" and "PENDING_PAYMENT" in response.json()["detail"]
    assert SignatureNonce.objects.filter(booking__uuid=booking["id"], kind=SignatureKind.PAYMENT).count() == 2

    # -- cancellation: the customer, 12 h before, gets 50 %; the rest pays out like a completion ---
    response = api.post(base + "request-cancellation/", {"reason": "cannot make it"}, format="json")
    assert response.status_code == 200, response.content
    cancellation = response.json()
    assert cancellation["policy_tier"] == "partial_refund" and cancellation["booking_status"] == "PENDING_CANCELLATION"
    # 100.50 USDC: 50.25 back; of the 50.25 kept, 5 % platform, 5 % inviter, the provider the rest.
    expected = {"customer": 50_250_000, "provider": 45_225_000, "platform": 2_512_500, "inviter": 2_512_500}
    assert {k: int(v) for k, v in cancellation["split"].items()} == expected
    assert cancellation["message"]["customerAmount"] == "50250000"
    assert cancellation["message"]["reason"] == "cannot make it"

    parties = {
        "customer": customer.address,
        "provider": provider.address,
        "platform": chain.accounts.fee_recipient.address,
        "inviter": inviter.address,
        "escrow": chain.escrow,
    }
    before = _balances(chain, **parties)
    receipt = chain.transact(_cancel(chain, cancellation), customer.address)
    after = _balances(chain, **parties)
    assert {k: after[k] - before[k] for k in expected} == expected
    assert before["escrow"] - after["escrow"] == 100_500_000

    assert _submit(api, base, receipt)["booking_status"] == "CANCELLED"
    final = api.get(base).json()
    assert final["status"] == "CANCELLED"
    assert [change["to_status"] for change in final["status_history"]] == [
        "PENDING_PAYMENT", "EXPIRED", "PENDING_PAYMENT", "PAID", "PENDING_CANCELLATION", "CANCELLED",
    ]


def test_a_booking_past_its_time_gets_no_new_authorization(chain_settings):
    """Once a booking can no longer be paid, the API answers 409 and signs nothing at all."""
    chain = chain_settings
    customer, provider = chain.accounts.customers[3:5]
    api = sign_in(customer, chain_id=chain.chain_id)
    response = api.post(
        "/api/bookings/",
        {
            "provider": provider.address,
            "amount": "12",
            "scheduled_at": (timezone.now() + timedelta(hours=1)).isoformat(),
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    booking_id = response.json()["id"]
    assert api.post(f"/api/bookings/{booking_id}/authorize-payment/", format="json").status_code == 200
    # The scheduled time passes unpaid: housekeeping expires the booking.
    Booking.objects.filter(uuid=booking_id).update(scheduled_at=timezone.now() - timedelta(minutes=1))
    assert expire_unused_authorizations(now=timezone.now() + timedelta(hours=1))["expired"] == 1

    response = api.post(f"/api/bookings/{booking_id}/authorize-payment/", format="json")
    assert response.status_code == 409, response.content
    assert response.json()["status"] == "EXPIRED" and "scheduled time has passed" in response.json()["detail"]
    assert SignatureNonce.objects.filter(booking__uuid=booking_id).count() == 1
