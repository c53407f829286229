"""completeService / completeServiceByOperator: payouts, rounding, events, timing."""

from __future__ import annotations

import pytest

from contracts.anvil import DEPLOYER, FEE_RECIPIENT, OPERATOR
from contracts.testing import CUSTOMER, CUSTOMER2, INVITER, PROVIDER, STRANGER, USDC, ZERO_ADDRESS


def _split(amount, platform_rate, inviter_rate):
    platform = amount * platform_rate // 10_000
    inviter = amount * inviter_rate // 10_000
    return amount - platform - inviter, platform, inviter


@pytest.mark.parametrize(
    ("amount", "inviter", "platform_rate", "inviter_rate"),
    [
        (100 * USDC, False, 1000, 0),  # default, no inviter
        (100 * USDC, True, 500, 500),  # default with inviter
        (1_000_001, True, 2000, 1000),  # caps, rounding down
        (9_999, True, 333, 777),  # fees round down to less than a cent
        (1, True, 2000, 1000),  # everything rounds to zero: provider gets it all
    ],
)
def test_customer_completion_pays_out(contract_chain, amount, inviter, platform_rate, inviter_rate):
    chain = contract_chain
    dep = chain.dep
    inviter_addr = INVITER.address if inviter else ZERO_ADDRESS
    bid, auth = chain.create_paid("complete", amount=amount, inviter=inviter_addr,
                                  platform_fee_rate=platform_rate, inviter_fee_rate=inviter_rate)
    who = [PROVIDER.address, FEE_RECIPIENT.address, INVITER.address, dep.escrow, CUSTOMER.address]
    before = chain.balances(*who)
    receipt = chain.escrow_send("completeService", [bid], CUSTOMER.private_key)
    after = chain.balances(*who)

    provider_amount, platform_fee, inviter_fee = _split(amount, platform_rate, inviter_rate)
    assert provider_amount + platform_fee + inviter_fee == amount
    changes = [a - b for a, b in zip(after, before, strict=False)]
    assert changes == [provider_amount, platform_fee, inviter_fee, -amount, 0]
    assert chain.escrow_events(receipt) == [(
        "ServiceCompleted",
        {"bookingId": bid, "provider": PROVIDER.address, "providerAmount": provider_amount,
         "platformFee": platform_fee, "inviterFee": inviter_fee},
    )]
    # zero parts are not transferred
    transfers = [args for name, args in chain.events(receipt, dep.usdc) if name == "Transfer"]
    expected = [(dep.escrow, to, value) for to, value in
                ((PROVIDER.address, provider_amount), (FEE_RECIPIENT.address, platform_fee),
                 (INVITER.address, inviter_fee)) if value]
    assert transfers == expected
    assert chain.booking(bid)["status"] == 2


def test_completion_refusals(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("complete-refusals")
    for account in (PROVIDER, STRANGER, CUSTOMER2, OPERATOR, DEPLOYER):
        err = chain.expect_revert("completeService", [bid], account.private_key)
        assert (err.name, err.args_) == ("CallerNotCustomer", ())
    unknown = b"\x42" * 32
    err = chain.expect_revert("completeService", [unknown], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (unknown, 0))

    chain.escrow_send("completeService", [bid], CUSTOMER.private_key)
    err = chain.expect_revert("completeService", [bid], CUSTOMER.private_key)  # double complete
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 2))
    chain.increase_time(7200)
    err = chain.expect_revert("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 2))


def test_complete_after_cancel_is_refused(contract_chain):
    chain = contract_chain
    bid, auth = chain.create_paid("complete-after-cancel")
    chain.cancel(chain.cancel_auth(bid, customer_amount=auth["amount"]), PROVIDER.private_key)
    err = chain.expect_revert("completeService", [bid], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 3))
    chain.increase_time(7200)
    err = chain.expect_revert("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert (err.name, err.args_) == ("BookingNotPaid", (bid, 3))


def test_operator_completion_waits_for_the_service_window(contract_chain):
    chain = contract_chain
    amount = 80 * USDC
    bid, _ = chain.create_paid("operator-complete", amount=amount, inviter=INVITER.address)
    paid_at = chain.booking(bid)["paidAt"]
    assert chain.uint_view("operatorCompletionDelay") == 3600
    ready_at = paid_at + 3600

    err = chain.expect_revert("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert (err.name, err.args_) == ("ServiceWindowNotPassed", (ready_at,))
    chain.set_next_timestamp(ready_at - 1)
    chain.mine()
    err = chain.expect_revert("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert (err.name, err.args_) == ("ServiceWindowNotPassed", (ready_at,))

    # only the operator, never the owner, customer or provider
    for account in (DEPLOYER, CUSTOMER, PROVIDER, STRANGER):
        err = chain.expect_revert("completeServiceByOperator", [bid], account.private_key)
        assert (err.name, err.args_) == ("CallerNotOperator", ())

    chain.set_next_timestamp(ready_at)  # exactly at paidAt + delay
    receipt = chain.escrow_send("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == ready_at
    assert chain.escrow_events(receipt) == [(
        "ServiceCompleted",
        {"bookingId": bid, "provider": PROVIDER.address, "providerAmount": 72 * USDC,
         "platformFee": 4 * USDC, "inviterFee": 4 * USDC},
    )]
    assert chain.balances(PROVIDER.address, FEE_RECIPIENT.address, INVITER.address) == [
        72 * USDC, 4 * USDC, 4 * USDC]
    assert chain.booking(bid)["status"] == 2


def test_operator_completion_delay_is_owner_settable(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("delay")
    paid_at = chain.booking(bid)["paidAt"]

    receipt = chain.escrow_send("setOperatorCompletionDelay", [0], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("OperatorCompletionDelayUpdated", (3600, 0))]
    assert chain.uint_view("operatorCompletionDelay") == 0
    receipt = chain.escrow_send("setOperatorCompletionDelay", [86_400], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("OperatorCompletionDelayUpdated", (0, 86_400))]
    err = chain.expect_revert("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert (err.name, err.args_) == ("ServiceWindowNotPassed", (paid_at + 86_400,))

    err = chain.expect_revert("setOperatorCompletionDelay", [30 * 86_400 + 1], DEPLOYER.private_key)
    assert (err.name, err.args_) == ("CompletionDelayTooLong", (30 * 86_400 + 1,))
    chain.escrow_send("setOperatorCompletionDelay", [30 * 86_400], DEPLOYER.private_key)
    err = chain.expect_revert("setOperatorCompletionDelay", [60], OPERATOR.private_key)
    assert (err.name, err.args_) == ("OwnableUnauthorizedAccount", (OPERATOR.address.lower(),))

    # a shorter delay applies to bookings already paid
    chain.escrow_send("setOperatorCompletionDelay", [60], DEPLOYER.private_key)
    chain.set_next_timestamp(paid_at + 60)
    chain.escrow_send("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert chain.booking(bid)["status"] == 2
