"""cancelBooking (signed split) and emergencyCancelBooking (full refund)."""

from __future__ import annotations

import pytest

from contracts.anvil import DEPLOYER, FEE_RECIPIENT, OPERATOR
from contracts.testing import CUSTOMER, CUSTOMER2, INVITER, PROVIDER, STRANGER, USDC, ZERO_ADDRESS


@pytest.mark.parametrize("caller", ["customer", "provider"])
def test_cancel_with_signed_split(contract_chain, caller):
    chain = contract_chain
    dep = chain.dep
    amount = 100 * USDC
    bid, _ = chain.create_paid("cancel-split", amount=amount, inviter=INVITER.address)
    key = CUSTOMER.private_key if caller == "customer" else PROVIDER.private_key
    sender = CUSTOMER.address if caller == "customer" else PROVIDER.address
    reason = "provider no-show — 部分退款 ✓"
    auth = chain.cancel_auth(bid, customer_amount=70 * USDC, provider_amount=20 * USDC,
                             platform_amount=7 * USDC, inviter_amount=3 * USDC, reason=reason, nonce=77)
    who = [CUSTOMER.address, PROVIDER.address, FEE_RECIPIENT.address, INVITER.address, dep.escrow]
    before = chain.balances(*who)
    receipt = chain.cancel(auth, key)
    after = chain.balances(*who)
    assert [a - b for a, b in zip(after, before, strict=False)] == [70 * USDC, 20 * USDC, 7 * USDC, 3 * USDC, -amount]
    assert chain.escrow_events(receipt) == [(
        "BookingCancelled",
        {"bookingId": bid, "cancelledBy": sender, "customerAmount": 70 * USDC, "providerAmount": 20 * USDC,
         "platformAmount": 7 * USDC, "inviterAmount": 3 * USDC, "reason": reason},
    )]
    assert chain.booking(bid)["status"] == 3
    assert chain.nonce_used(77)

    # double cancel
    again = chain.cancel_auth(bid, customer_amount=amount, nonce=78)
    err = chain.expect_revert("cancelBooking", [chain.cancel_tuple(again), chain.sign_cancel(again)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 3))


def test_cancel_full_refund_skips_zero_parts(contract_chain):
    chain = contract_chain
    bid, auth = chain.create_paid("cancel-refund", amount=33 * USDC)
    receipt = chain.cancel(chain.cancel_auth(bid, customer_amount=33 * USDC, reason=""), CUSTOMER.private_key)
    assert [args for name, args in chain.events(receipt, chain.dep.usdc)] == [
        (chain.dep.escrow, CUSTOMER.address, 33 * USDC)]
    assert chain.escrow_events(receipt)[0][1]["reason"] == ""
    assert chain.balance(chain.dep.escrow) == 0


def test_cancel_refusals(contract_chain):
    chain = contract_chain
    amount = 100 * USDC
    bid, _ = chain.create_paid("cancel-refusals", amount=amount, nonce=1)

    def refused(auth, key=CUSTOMER.private_key, sig=None):
        sig = chain.sign_cancel(auth) if sig is None else sig
        return chain.expect_revert("cancelBooking", [chain.cancel_tuple(auth), sig], key)

    ok = chain.cancel_auth(bid, customer_amount=amount, nonce=2)
    for account in (STRANGER, CUSTOMER2, OPERATOR, DEPLOYER, INVITER):
        err = refused(ok, account.private_key)
        assert (err.name, err.args_) == ("CallerNotParty", ())

    err = refused(chain.cancel_auth(bid, customer_amount=amount - 1, nonce=2))
    assert (err.name, err.args_) == ("SplitMismatch", (amount - 1, amount))
    err = refused(chain.cancel_auth(bid, customer_amount=amount, platform_amount=1, nonce=2))
    assert (err.name, err.args_) == ("SplitMismatch", (amount + 1, amount))
    err = refused(chain.cancel_auth(bid, customer_amount=amount - 5, inviter_amount=5, nonce=2))
    assert (err.name, err.args_) == ("InviterAmountWithoutInviter", ())

    err = refused(ok, sig=chain.sign_cancel(ok, key=STRANGER.private_key))
    assert (err.name, err.args_) == ("InvalidSignature", ())
    err = refused(ok, sig=chain.sign_cancel(ok, chain_id=1))
    assert (err.name, err.args_) == ("InvalidSignature", ())
    err = refused(ok, sig=chain.sign_cancel(ok, verifying_contract=chain.dep.usdc))
    assert (err.name, err.args_) == ("InvalidSignature", ())
    tampered = dict(ok, reason="something else")
    err = refused(tampered, sig=chain.sign_cancel(ok))
    assert (err.name, err.args_) == ("InvalidSignature", ())

    # nonce 1 was consumed by the booking authorization (one shared nonce space)
    err = refused(chain.cancel_auth(bid, customer_amount=amount, nonce=1))
    assert (err.name, err.args_) == ("NonceAlreadyUsed", (1,))

    expiring = chain.cancel_auth(bid, customer_amount=amount, nonce=3, expiry=chain.latest_timestamp() + 60)
    sig = chain.sign_cancel(expiring)
    chain.increase_time(61)
    err = refused(expiring, sig=sig)
    assert (err.name, err.args_) == ("AuthorizationExpired", (expiring["expiry"],))

    unknown = b"\x99" * 32
    err = refused(chain.cancel_auth(unknown, customer_amount=amount, nonce=4))
    assert (err.name, err.args_) == ("BookingNotPaid", (unknown, 0))

    # and the untouched authorization still works
    chain.cancel(ok, PROVIDER.private_key)
    assert chain.balance(chain.dep.escrow) == 0


def test_cancel_replayed_on_another_booking_is_refused(contract_chain):
    chain = contract_chain
    bid1, _ = chain.create_paid("replay-1", amount=10 * USDC, nonce=1)
    bid2, _ = chain.create_paid("replay-2", amount=10 * USDC, nonce=2)
    auth = chain.cancel_auth(bid1, customer_amount=10 * USDC, nonce=3)
    sig = chain.sign_cancel(auth)
    chain.cancel(auth, CUSTOMER.private_key, signature=sig)
    err = chain.expect_revert("cancelBooking", [chain.cancel_tuple(auth), sig], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid1, 3))
    # the same signature does not transfer to booking 2 (bookingId is signed)
    moved = dict(auth, bookingId=bid2, nonce=4)
    err = chain.expect_revert("cancelBooking", [chain.cancel_tuple(moved), sig], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("InvalidSignature", ())
    # a fresh cancel for booking 2 reusing the consumed nonce
    reuse = dict(auth, bookingId=bid2)
    err = chain.expect_revert("cancelBooking", [chain.cancel_tuple(reuse), chain.sign_cancel(reuse)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("NonceAlreadyUsed", (3,))


def test_cancel_after_complete_is_refused(contract_chain):
    chain = contract_chain
    bid, auth = chain.create_paid("cancel-after-complete")
    chain.escrow_send("completeService", [bid], CUSTOMER.private_key)
    cancel = chain.cancel_auth(bid, customer_amount=auth["amount"], nonce=5)
    err = chain.expect_revert("cancelBooking", [chain.cancel_tuple(cancel), chain.sign_cancel(cancel)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 2))
    err = chain.expect_revert("emergencyCancelBooking", [bid, "late"], OPERATOR.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 2))


@pytest.mark.parametrize("account", [OPERATOR, DEPLOYER], ids=["operator", "owner"])
def test_emergency_cancel_refunds_in_full(contract_chain, account):
    chain = contract_chain
    amount = 55 * USDC
    bid, _ = chain.create_paid("emergency", amount=amount, inviter=INVITER.address)
    before = chain.balance(CUSTOMER.address)
    receipt = chain.escrow_send("emergencyCancelBooking", [bid, "orphan: unknown to the DB"], account.private_key)
    assert chain.balance(CUSTOMER.address) == before + amount
    assert chain.balances(PROVIDER.address, INVITER.address, FEE_RECIPIENT.address, chain.dep.escrow) == [0] * 4
    assert chain.escrow_events(receipt) == [(
        "BookingCancelled",
        {"bookingId": bid, "cancelledBy": account.address, "customerAmount": amount, "providerAmount": 0,
         "platformAmount": 0, "inviterAmount": 0, "reason": "orphan: unknown to the DB"},
    )]
    assert chain.booking(bid)["status"] == 3
    err = chain.expect_revert("emergencyCancelBooking", [bid, "again"], account.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 3))


def test_emergency_cancel_refusals(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("emergency-refusals")
    for account in (CUSTOMER, PROVIDER, STRANGER, FEE_RECIPIENT):
        err = chain.expect_revert("emergencyCancelBooking", [bid, "nope"], account.private_key)
        assert (err.name, err.args_) == ("CallerNotOperatorOrOwner", ())
    unknown = b"\x07" * 32
    err = chain.expect_revert("emergencyCancelBooking", [unknown, "x"], OPERATOR.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (unknown, 0))
    assert chain.booking(bid)["inviter"] == ZERO_ADDRESS
