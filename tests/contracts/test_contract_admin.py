"""Pause, role rotation, ownership, constructor checks and read views."""

from __future__ import annotations

import pytest
from eth_abi import encode as abi_encode

from contracts.anvil import DEPLOYER, FEE_RECIPIENT, OPERATOR, SIGNER
from contracts.artifacts import load_artifact
from contracts.testing import CUSTOMER, CUSTOMER2, INVITER, PROVIDER, PROVIDER2, STRANGER, USDC, ZERO_ADDRESS, Reverted


def _lower(account):
    return account.address.lower()


def test_initial_configuration_and_views(contract_chain):
    chain = contract_chain
    dep = chain.dep
    assert chain.address_view("usdc") == dep.usdc
    assert chain.address_view("signer") == SIGNER.address
    assert chain.address_view("operator") == OPERATOR.address
    assert chain.address_view("feeRecipient") == FEE_RECIPIENT.address
    assert chain.address_view("owner") == DEPLOYER.address
    assert chain.address_view("pendingOwner") == ZERO_ADDRESS
    assert chain.paused() is False
    assert chain.uint_view("operatorCompletionDelay") == 3600
    assert [chain.uint_view(c) for c in ("BPS_DENOMINATOR", "MAX_PLATFORM_FEE_RATE", "MAX_INVITER_FEE_RATE",
                                         "DEFAULT_OPERATOR_COMPLETION_DELAY", "MAX_OPERATOR_COMPLETION_DELAY")] == [
        10_000, 2_000, 1_000, 3_600, 30 * 86_400]
    # Deployment.block_number is the escrow's deployment block
    w3 = chain.w3
    assert w3.eth.get_code(dep.escrow, dep.block_number - 1) == b""
    assert len(w3.eth.get_code(dep.escrow, dep.block_number)) > 0
    # same runtime code as the artifact (immutables such as usdc and the EIP-712 cache are
    # filled in at deployment, so compare length and the code outside them)
    code, expected = w3.eth.get_code(dep.escrow), bytes.fromhex(load_artifact("BookingEscrow")["deployedBytecode"][2:])
    assert len(code) == len(expected)
    assert code[:200] == expected[:200] and code[-53:] == expected[-53:]  # prologue and CBOR metadata
    assert w3.eth.get_transaction_receipt(dep.escrow_tx_hash)["blockNumber"] == dep.block_number
    # MockUSDC
    from contracts.artifacts import usdc_abi
    assert chain.call(dep.usdc, usdc_abi(), "decimals", [], ["uint8"]) == (6,)
    assert chain.call(dep.usdc, usdc_abi(), "name", [], ["string"]) == ("USD Coin",)
    assert chain.call(dep.usdc, usdc_abi(), "symbol", [], ["string"]) == ("USDC",)


def test_get_booking_and_batch_views(contract_chain):
    chain = contract_chain
    a, auth_a = chain.create_paid("view-a", amount=11 * USDC, nonce=1)
    b, auth_b = chain.create_paid("view-b", customer=CUSTOMER2, provider=PROVIDER2, inviter=INVITER.address,
                                  amount=22 * USDC, nonce=2)
    c, _ = chain.create_paid("view-c", amount=33 * USDC, nonce=3)
    chain.escrow_send("completeService", [c], CUSTOMER.private_key)
    unknown = b"\x01" * 32
    empty = {"customer": ZERO_ADDRESS, "provider": ZERO_ADDRESS, "inviter": ZERO_ADDRESS, "amount": 0,
             "platformFeeRate": 0, "inviterFeeRate": 0, "paidAt": 0, "status": 0}
    assert chain.booking(unknown) == empty
    views = chain.bookings([a, unknown, b, c, a])
    assert [v["status"] for v in views] == [1, 0, 1, 2, 1]
    assert views[0] == chain.booking(a) and views[4] == views[0]
    assert views[1] == empty
    assert (views[2]["customer"], views[2]["provider"], views[2]["inviter"], views[2]["amount"],
            views[2]["platformFeeRate"], views[2]["inviterFeeRate"]) == (
        _lower(CUSTOMER2), _lower(PROVIDER2), _lower(INVITER), 22 * USDC, 500, 500)
    assert views[3]["amount"] == 33 * USDC
    assert chain.bookings([]) == []
    # a large batch in one eth_call
    assert len(chain.bookings([a] * 500)) == 500


def test_pause_blocks_payments_and_completions_but_not_refunds(contract_chain):
    chain = contract_chain
    bid1, a1 = chain.create_paid("pause-1", amount=10 * USDC, nonce=1)
    bid2, a2 = chain.create_paid("pause-2", amount=20 * USDC, nonce=2)
    bid3, a3 = chain.create_paid("pause-3", amount=30 * USDC, nonce=3)

    receipt = chain.escrow_send("pause", [], OPERATOR.private_key)
    assert chain.escrow_events(receipt) == [("Paused", (OPERATOR.address,))]
    assert chain.paused() is True

    new = chain.booking_auth("pause-new", nonce=4)
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(new), chain.sign_booking(new)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("EnforcedPause", ())
    err = chain.expect_revert("createAndPayBookingWithPermit",
                              [chain.booking_tuple(new), chain.sign_booking(new), 0, 27, b"\x00" * 32, b"\x00" * 32],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("EnforcedPause", ())
    err = chain.expect_revert("completeService", [bid1], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("EnforcedPause", ())
    chain.increase_time(7200)
    err = chain.expect_revert("completeServiceByOperator", [bid1], OPERATOR.private_key)
    assert (err.name, err.args_) == ("EnforcedPause", ())

    # refunds keep working while paused
    cancel = chain.cancel_auth(bid2, customer_amount=15 * USDC, provider_amount=5 * USDC, nonce=5)
    chain.cancel(cancel, CUSTOMER.private_key)
    chain.escrow_send("emergencyCancelBooking", [bid3, "incident"], OPERATOR.private_key)
    assert [chain.booking(b)["status"] for b in (bid1, bid2, bid3)] == [1, 3, 3]

    # pausing twice / operator unpausing are refused; only the owner unpauses
    err = chain.expect_revert("pause", [], DEPLOYER.private_key)
    assert (err.name, err.args_) == ("EnforcedPause", ())
    err = chain.expect_revert("unpause", [], OPERATOR.private_key)
    assert (err.name, err.args_) == ("OwnableUnauthorizedAccount", (_lower(OPERATOR),))
    receipt = chain.escrow_send("unpause", [], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("Unpaused", (DEPLOYER.address,))]
    err = chain.expect_revert("unpause", [], DEPLOYER.private_key)
    assert (err.name, err.args_) == ("ExpectedPause", ())

    chain.escrow_send("completeServiceByOperator", [bid1], OPERATOR.private_key)
    chain.pay(chain.booking_auth("pause-after", nonce=6))
    assert chain.balance(chain.dep.escrow) == 100 * USDC


def test_pause_permissions(contract_chain):
    chain = contract_chain
    for account in (CUSTOMER, PROVIDER, SIGNER, FEE_RECIPIENT, STRANGER):
        err = chain.expect_revert("pause", [], account.private_key)
        assert (err.name, err.args_) == ("CallerNotOperatorOrOwner", ())
    receipt = chain.escrow_send("pause", [], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("Paused", (DEPLOYER.address,))]
    for account in (CUSTOMER, STRANGER):
        err = chain.expect_revert("unpause", [], account.private_key)
        assert (err.name, err.args_) == ("OwnableUnauthorizedAccount", (_lower(account),))


def test_signer_rotation_invalidates_old_signatures(contract_chain):
    chain = contract_chain
    pre_signed = chain.booking_auth("rotation-old", nonce=1)
    old_sig = chain.sign_booking(pre_signed)  # issued by the old signer before the rotation

    receipt = chain.escrow_send("setSigner", [STRANGER.address], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("SignerUpdated", (SIGNER.address, STRANGER.address))]
    assert chain.address_view("signer") == STRANGER.address

    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(pre_signed), old_sig],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("InvalidSignature", ())
    new_sig = chain.sign_booking(pre_signed, key=STRANGER.private_key)
    chain.pay(pre_signed, signature=new_sig)

    # cancellations too
    bid = pre_signed["bookingId"]
    cancel = chain.cancel_auth(bid, customer_amount=pre_signed["amount"], nonce=2)
    err = chain.expect_revert("cancelBooking", [chain.cancel_tuple(cancel), chain.sign_cancel(cancel)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("InvalidSignature", ())
    chain.cancel(cancel, CUSTOMER.private_key, signature=chain.sign_cancel(cancel, key=STRANGER.private_key))


def test_operator_rotation(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("operator-rotation", nonce=1)
    receipt = chain.escrow_send("setOperator", [PROVIDER2.address], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("OperatorUpdated", (OPERATOR.address, PROVIDER2.address))]
    assert chain.address_view("operator") == PROVIDER2.address
    err = chain.expect_revert("emergencyCancelBooking", [bid, "old operator"], OPERATOR.private_key)
    assert (err.name, err.args_) == ("CallerNotOperatorOrOwner", ())
    err = chain.expect_revert("pause", [], OPERATOR.private_key)
    assert (err.name, err.args_) == ("CallerNotOperatorOrOwner", ())
    chain.increase_time(3600)
    err = chain.expect_revert("completeServiceByOperator", [bid], OPERATOR.private_key)
    assert (err.name, err.args_) == ("CallerNotOperator", ())
    chain.escrow_send("completeServiceByOperator", [bid], PROVIDER2.private_key)


def test_fee_recipient_rotation(contract_chain):
    chain = contract_chain
    bid, _ = chain.create_paid("fee-rotation", amount=100 * USDC, nonce=1)
    receipt = chain.escrow_send("setFeeRecipient", [STRANGER.address], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("FeeRecipientUpdated", (FEE_RECIPIENT.address, STRANGER.address))]
    assert chain.address_view("feeRecipient") == STRANGER.address
    chain.escrow_send("completeService", [bid], CUSTOMER.private_key)
    assert chain.balances(STRANGER.address, FEE_RECIPIENT.address) == [10 * USDC, 0]


@pytest.mark.parametrize("setter", ["setSigner", "setOperator", "setFeeRecipient"])
def test_setters_are_owner_only_and_reject_zero(contract_chain, setter):
    chain = contract_chain
    for account in (OPERATOR, SIGNER, STRANGER):
        err = chain.expect_revert(setter, [STRANGER.address], account.private_key)
        assert (err.name, err.args_) == ("OwnableUnauthorizedAccount", (_lower(account),))
    err = chain.expect_revert(setter, [ZERO_ADDRESS], DEPLOYER.private_key)
    assert (err.name, err.args_) == ("ZeroAddress", ())


def test_two_step_ownership_and_no_renounce(contract_chain):
    chain = contract_chain
    err = chain.expect_revert("renounceOwnership", [], DEPLOYER.private_key)
    assert (err.name, err.args_) == ("OwnershipRenouncementDisabled", ())

    receipt = chain.escrow_send("transferOwnership", [STRANGER.address], DEPLOYER.private_key)
    assert chain.escrow_events(receipt) == [("OwnershipTransferStarted", (DEPLOYER.address, STRANGER.address))]
    assert chain.address_view("owner") == DEPLOYER.address
    assert chain.address_view("pendingOwner") == STRANGER.address
    err = chain.expect_revert("acceptOwnership", [], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("OwnableUnauthorizedAccount", (_lower(CUSTOMER),))
    receipt = chain.escrow_send("acceptOwnership", [], STRANGER.private_key)
    assert chain.escrow_events(receipt) == [("OwnershipTransferred", (DEPLOYER.address, STRANGER.address))]
    assert chain.address_view("owner") == STRANGER.address
    err = chain.expect_revert("setSigner", [STRANGER.address], DEPLOYER.private_key)
    assert (err.name, err.args_) == ("OwnableUnauthorizedAccount", (_lower(DEPLOYER),))
    chain.escrow_send("setSigner", [STRANGER.address], STRANGER.private_key)


@pytest.mark.parametrize("zero_index", [0, 2, 3, 4])
def test_constructor_rejects_zero_addresses(contract_chain, zero_index):
    chain = contract_chain
    args = [chain.dep.usdc, DEPLOYER.address, SIGNER.address, OPERATOR.address, FEE_RECIPIENT.address]
    args[zero_index] = ZERO_ADDRESS
    code = bytes.fromhex(load_artifact("BookingEscrow")["bytecode"][2:]) + abi_encode(["address"] * 5, args)
    with pytest.raises(Reverted) as excinfo:
        chain.rpc("eth_estimateGas", [{"from": DEPLOYER.address, "data": "0x" + code.hex()}])
    assert (excinfo.value.name, excinfo.value.args_) == ("ZeroAddress", ())


def test_constructor_rejects_zero_owner(contract_chain):
    chain = contract_chain
    args = [chain.dep.usdc, ZERO_ADDRESS, SIGNER.address, OPERATOR.address, FEE_RECIPIENT.address]
    code = bytes.fromhex(load_artifact("BookingEscrow")["bytecode"][2:]) + abi_encode(["address"] * 5, args)
    with pytest.raises(Reverted) as excinfo:
        chain.rpc("eth_estimateGas", [{"from": DEPLOYER.address, "data": "0x" + code.hex()}])
    assert (excinfo.value.name, excinfo.value.args_) == ("OwnableInvalidOwner", (ZERO_ADDRESS,))


def test_constructor_events(contract_chain):
    chain = contract_chain
    receipt = chain.w3.eth.get_transaction_receipt(chain.dep.escrow_tx_hash)
    assert chain.escrow_events(receipt) == [
        ("OwnershipTransferred", (ZERO_ADDRESS, DEPLOYER.address)),
        ("SignerUpdated", (ZERO_ADDRESS, SIGNER.address)),
        ("OperatorUpdated", (ZERO_ADDRESS, OPERATOR.address)),
        ("FeeRecipientUpdated", (ZERO_ADDRESS, FEE_RECIPIENT.address)),
        ("OperatorCompletionDelayUpdated", (0, 3600)),
    ]
