"""resolveDispute: the operator pays out a disputed booking with the split staff decided."""

from __future__ import annotations

import pytest

from contracts import artifacts
from contracts.anvil import DEPLOYER, FEE_RECIPIENT, OPERATOR, SIGNER
from contracts.testing import CUSTOMER, INVITER, PROVIDER, STRANGER, USDC

RESOLVE = "resolveDispute"
PANIC, ARITHMETIC_OVERFLOW = "0x4e487b71", 0x11  # Panic(uint256) and its overflow code


def _resolve(chain, bid, parts, reason="dispute #1 resolved", key=OPERATOR.private_key):
    return chain.escrow_send(RESOLVE, [bid, *parts, reason], key)


def _refused(chain, bid, parts, reason="dispute", key=OPERATOR.private_key):
    return chain.expect_revert(RESOLVE, [bid, *parts, reason], key)


def test_the_function_adds_to_the_fixed_surface_and_emits_the_design_event():
    [fn] = [e for e in artifacts.escrow_abi() if e.get("name") == RESOLVE]
    assert artifacts.signature(fn) == "resolveDispute(bytes32,uint256,uint256,uint256,uint256,string)"
    assert fn["outputs"] == [] and fn["stateMutability"] == "nonpayable"


@pytest.mark.parametrize(
    "parts",
    [
        (60 * USDC, 30 * USDC, 7 * USDC, 3 * USDC),  # any split
        (100 * USDC, 0, 0, 0),  # everything back to the customer
        (0, 90 * USDC, 5 * USDC, 5 * USDC),  # the completion's split, decided by staff
        (1, 100 * USDC - 3, 1, 1),  # to the base unit
    ],
    ids=["split", "refund", "provider", "base-units"],
)
def test_the_operator_pays_out_any_split_that_sums_to_the_amount(contract_chain, parts):
    chain = contract_chain
    amount = 100 * USDC
    bid, _ = chain.create_paid("dispute-split", amount=amount, inviter=INVITER.address)
    who = [CUSTOMER.address, PROVIDER.address, FEE_RECIPIENT.address, INVITER.address, chain.dep.escrow]
    before = chain.balances(*who)

    receipt = _resolve(chain, bid, parts, reason="dispute #7: half the service was delivered")

    after = chain.balances(*who)
    assert [a - b for a, b in zip(after, before, strict=True)] == [*parts, -amount]
    assert chain.escrow_events(receipt) == [(
        "BookingCancelled",
        {"bookingId": bid, "cancelledBy": OPERATOR.address, "customerAmount": parts[0], "providerAmount": parts[1],
         "platformAmount": parts[2], "inviterAmount": parts[3], "reason": "dispute #7: half the service was delivered"},
    )]
    assert chain.booking(bid)["status"] == 3  # Cancelled
    err = _refused(chain, bid, parts)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 3))


def test_a_split_that_does_not_sum_to_the_amount_is_refused(contract_chain):
    chain = contract_chain
    amount = 50 * USDC
    bid, _ = chain.create_paid("dispute-mismatch", amount=amount, inviter=INVITER.address)
    err = _refused(chain, bid, (amount - 1, 0, 0, 0))
    assert (err.name, err.args_) == ("SplitMismatch", (amount - 1, amount))
    err = _refused(chain, bid, (amount, 0, 0, 1))
    assert (err.name, err.args_) == ("SplitMismatch", (amount + 1, amount))
    # Overflowing parts revert (checked arithmetic) rather than wrap around to the amount.
    err = _refused(chain, bid, (2**256 - 1, 1, 0, 0))
    assert (err.selector, int.from_bytes(err.data[4:36], "big")) == (PANIC, ARITHMETIC_OVERFLOW)
    assert chain.booking(bid)["status"] == 1


def test_no_inviter_part_without_an_inviter(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("dispute-no-inviter", amount=10 * USDC)
    err = _refused(chain, bid, (5 * USDC, 4 * USDC, 0, 1 * USDC))
    assert (err.name, err.args_) == ("InviterAmountWithoutInviter", ())
    _resolve(chain, bid, (5 * USDC, 4 * USDC, 1 * USDC, 0))
    assert chain.booking(bid)["status"] == 3


def test_only_the_operator_resolves(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("dispute-roles", amount=10 * USDC)
    for account in (DEPLOYER, SIGNER, CUSTOMER, PROVIDER, FEE_RECIPIENT, STRANGER):
        err = _refused(chain, bid, (10 * USDC, 0, 0, 0), key=account.private_key)
        assert (err.name, err.args_) == ("CallerNotOperator", ()), account
    assert chain.booking(bid)["status"] == 1


def test_only_paid_bookings_can_be_resolved(contract_chain):
    chain = contract_chain
    unknown = b"\x42" * 32
    err = _refused(chain, unknown, (0, 0, 0, 0))
    assert (err.name, err.args_) == ("BookingNotPaid", (unknown, 0))
    bid, _ = chain.create_paid("dispute-completed", amount=10 * USDC)
    chain.escrow_send("completeService", [bid], CUSTOMER.private_key)
    err = _refused(chain, bid, (10 * USDC, 0, 0, 0))
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 2))


def test_a_pause_stops_resolutions_and_leaves_full_refunds_open(contract_chain):
    """A resolution pays whoever the operator names: the pause that answers a suspected operator
    key leak must stop it, as it stops completeServiceByOperator."""
    chain = contract_chain
    bid, _ = chain.create_paid("dispute-paused", amount=10 * USDC)
    chain.escrow_send("pause", [], DEPLOYER.private_key)
    err = _refused(chain, bid, (0, 9 * USDC, 1 * USDC, 0))
    assert (err.name, err.args_) == ("EnforcedPause", ())
    chain.escrow_send("emergencyCancelBooking", [bid, "incident"], OPERATOR.private_key)
    assert chain.booking(bid)["status"] == 3
    chain.escrow_send("unpause", [], DEPLOYER.private_key)
    other, _ = chain.create_paid("dispute-unpaused", amount=10 * USDC, nonce=2)
    _resolve(chain, other, (0, 9 * USDC, 1 * USDC, 0))
    assert chain.balance(chain.dep.escrow) == 0
