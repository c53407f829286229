"""createAndPayBooking / createAndPayBookingWithPermit and EIP-712 authorization checks."""

from __future__ import annotations

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from contracts.anvil import DEPLOYER, SIGNER
from contracts.artifacts import BOOKING_AUTHORIZATION_TYPE, CANCELLATION_AUTHORIZATION_TYPE, usdc_abi
from contracts.deploy import mint_usdc
from contracts.testing import (
    CUSTOMER,
    CUSTOMER2,
    INVITER,
    PROVIDER,
    STRANGER,
    USDC,
    ZERO_ADDRESS,
    error_selector,
)


def test_must_show_python_signed_authorization_is_accepted_and_replay_refused(contract_chain):
    """The backend-style flow: sign in Python with eth-account, pay on chain, replay refused."""
    chain = contract_chain
    dep = chain.dep
    amount = 250 * USDC
    auth = chain.booking_auth("8c1f9a0e-5b7d-4a55-9a55-3f1d2f0b8d11", amount=amount, nonce=424242)
    signature = chain.sign_booking(auth)  # eth_account encode_typed_data + Account.sign_message
    assert len(signature) == 65

    customer_before, escrow_before = chain.balances(CUSTOMER.address, dep.escrow)
    receipt = chain.pay(auth, signature=signature, key=CUSTOMER.private_key)
    customer_after, escrow_after = chain.balances(CUSTOMER.address, dep.escrow)

    assert customer_after == customer_before - amount
    assert escrow_after == escrow_before + amount
    block_ts = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert chain.booking(auth["bookingId"]) == {
        "customer": CUSTOMER.address.lower(),
        "provider": PROVIDER.address.lower(),
        "inviter": ZERO_ADDRESS,
        "amount": amount,
        "platformFeeRate": 1000,
        "inviterFeeRate": 0,
        "paidAt": block_ts,
        "status": 1,
    }
    assert chain.nonce_used(424242)
    events = chain.escrow_events(receipt)
    assert events == [(
        "BookingCreatedAndPaid",
        {
            "bookingId": auth["bookingId"],
            "customer": CUSTOMER.address,
            "provider": PROVIDER.address,
            "inviter": ZERO_ADDRESS,
            "amount": amount,
            "platformFeeRate": 1000,
            "inviterFeeRate": 0,
        },
    )]
    # USDC moved by a Transfer customer -> escrow
    assert chain.events(receipt, dep.usdc) == [("Transfer", (CUSTOMER.address, dep.escrow, amount))]

    # The very same authorization and signature again: the nonce check comes first.
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(auth), signature], CUSTOMER.private_key)
    assert err.selector == error_selector("NonceAlreadyUsed(uint256)")
    assert (err.name, err.args_) == ("NonceAlreadyUsed", (424242,))
    # A freshly signed authorization (new nonce) for the same booking id is refused as well.
    again = dict(auth, nonce=424243)
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(again), chain.sign_booking(again)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("BookingAlreadyExists", (auth["bookingId"],))
    assert chain.balances(CUSTOMER.address, dep.escrow) == [customer_after, escrow_after]


def _struct_hash(type_string: str, types: list[str], values: list) -> bytes:
    return keccak(abi_encode(["bytes32", *types], [keccak(text=type_string), *values]))


def test_digests_and_domain_match_an_independent_computation(contract_chain):
    chain = contract_chain
    domain_type = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    expected_domain = keccak(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [keccak(text=domain_type), keccak(text="BookingEscrow"), keccak(text="1"), 31337, chain.dep.escrow],
    ))
    (separator,) = chain.escrow_call("domainSeparator", [], ["bytes32"])
    assert separator == expected_domain
    fields, name, version, chain_id, verifying, salt, extensions = chain.escrow_call(
        "eip712Domain", [], ["bytes1", "string", "string", "uint256", "address", "bytes32", "uint256[]"])
    assert (fields, name, version, chain_id, verifying.lower()) == (
        b"\x0f", "BookingEscrow", "1", 31337, chain.dep.escrow.lower())

    auth = chain.booking_auth("digest", inviter=INVITER.address, nonce=77)
    struct = _struct_hash(BOOKING_AUTHORIZATION_TYPE,
                          ["bytes32", "address", "address", "address"] + ["uint256"] * 5,
                          list(chain.booking_tuple(auth)))
    expected = keccak(b"\x19\x01" + expected_domain + struct)
    (digest,) = chain.escrow_call("hashBookingAuthorization", [chain.booking_tuple(auth)], ["bytes32"])
    assert digest == expected
    # eth-account's encode_typed_data signs exactly this digest
    sig = chain.sign_booking(auth)
    assert Account._recover_hash(digest, signature=sig) == SIGNER.address

    cancel = chain.cancel_auth("digest", customer_amount=60, provider_amount=30, platform_amount=7,
                               inviter_amount=3, reason="ünïcode ✓ reason", nonce=78)
    values = list(chain.cancel_tuple(cancel))
    values[5] = keccak(text=values[5])
    struct = _struct_hash(CANCELLATION_AUTHORIZATION_TYPE,
                          ["bytes32", "uint256", "uint256", "uint256", "uint256", "bytes32", "uint256", "uint256"],
                          values)
    (digest,) = chain.escrow_call("hashCancellationAuthorization", [chain.cancel_tuple(cancel)], ["bytes32"])
    assert digest == keccak(b"\x19\x01" + expected_domain + struct)
    assert Account._recover_hash(digest, signature=chain.sign_cancel(cancel)) == SIGNER.address


@pytest.mark.parametrize(
    "variant",
    ["wrong_chain_id", "wrong_verifying_contract", "wrong_signer", "tampered_amount", "tampered_provider",
     "short_signature", "garbage_signature", "high_s_signature"],
)
def test_bad_signatures_are_refused(contract_chain, variant):
    chain = contract_chain
    auth = chain.booking_auth("sig-" + variant, nonce=5)
    if variant == "wrong_chain_id":
        sig = chain.sign_booking(auth, chain_id=8453)
    elif variant == "wrong_verifying_contract":
        sig = chain.sign_booking(auth, verifying_contract=chain.dep.usdc)
    elif variant == "wrong_signer":
        sig = chain.sign_booking(auth, key=STRANGER.private_key)
    elif variant == "tampered_amount":
        sig = chain.sign_booking(auth)
        auth = dict(auth, amount=auth["amount"] - 1)
    elif variant == "tampered_provider":
        sig = chain.sign_booking(auth)
        auth = dict(auth, provider=CUSTOMER2.address)
    elif variant == "short_signature":
        sig = chain.sign_booking(auth)[:64]
    elif variant == "garbage_signature":
        sig = b"\x01" * 65
    else:  # malleated (s -> n - s, v flipped): valid ecrecover, refused by OpenZeppelin's ECDSA
        good = chain.sign_booking(auth)
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
        s = n - int.from_bytes(good[32:64], "big")
        sig = good[:32] + s.to_bytes(32, "big") + bytes([55 - good[64]])
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(auth), sig], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("InvalidSignature", ())
    assert not chain.nonce_used(5)


def test_caller_must_be_the_customer(contract_chain):
    chain = contract_chain
    auth = chain.booking_auth("caller")
    sig = chain.sign_booking(auth)
    for account in (STRANGER, PROVIDER, CUSTOMER2):
        err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(auth), sig], account.private_key)
        assert (err.name, err.args_) == ("CallerNotCustomer", ())


def test_expiry_is_inclusive_and_enforced(contract_chain):
    chain = contract_chain
    now = chain.latest_timestamp()
    # Paid in a block whose timestamp equals the expiry: accepted.
    ok = chain.booking_auth("expiry-ok", expiry=now + 100, nonce=1)
    chain.set_next_timestamp(now + 100)
    receipt = chain.pay(ok)
    assert chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == now + 100

    late = chain.booking_auth("expiry-late", expiry=now + 150, nonce=2)
    sig = chain.sign_booking(late)
    chain.set_next_timestamp(now + 151)
    chain.mine()
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(late), sig], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("AuthorizationExpired", (now + 150,))

    chain.increase_time(3600)
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(late), sig], CUSTOMER.private_key)
    assert (err.name, err.args_) == ("AuthorizationExpired", (now + 150,))


@pytest.mark.parametrize(
    ("overrides", "error", "args"),
    [
        ({"amount": 0}, "ZeroAmount", ()),
        ({"provider": ZERO_ADDRESS}, "ZeroAddress", ()),
        ({"provider": CUSTOMER.address}, "CustomerIsProvider", ()),
        ({"bookingId": b"\x00" * 32}, "ZeroBookingId", ()),
        ({"platformFeeRate": 2001}, "PlatformFeeRateTooHigh", (2001,)),
        ({"platformFeeRate": 10_000}, "PlatformFeeRateTooHigh", (10_000,)),
        ({"inviter": INVITER.address, "inviterFeeRate": 1001}, "InviterFeeRateTooHigh", (1001,)),
        ({"inviter": ZERO_ADDRESS, "inviterFeeRate": 1}, "InviterFeeWithoutInviter", ()),
        ({"inviter": ZERO_ADDRESS, "inviterFeeRate": 1000}, "InviterFeeWithoutInviter", ()),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(v),
)
def test_parameter_validation(contract_chain, overrides, error, args):
    chain = contract_chain
    auth = dict(chain.booking_auth("params"), **overrides)
    sig = chain.sign_booking(auth)  # validly signed: the parameter rules hold even for the signer
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(auth), sig], CUSTOMER.private_key)
    assert (err.name, err.args_) == (error, args)


@pytest.mark.parametrize(
    ("inviter", "platform", "inviter_rate"),
    [(ZERO_ADDRESS, 2000, 0), (ZERO_ADDRESS, 0, 0), ("INVITER", 2000, 1000), ("INVITER", 0, 0), ("INVITER", 500, 500)],
)
def test_fee_caps_are_inclusive(contract_chain, inviter, platform, inviter_rate):
    chain = contract_chain
    inviter = INVITER.address if inviter == "INVITER" else inviter
    bid, auth = chain.create_paid("caps", inviter=inviter, platform_fee_rate=platform, inviter_fee_rate=inviter_rate)
    view = chain.booking(bid)
    assert (view["platformFeeRate"], view["inviterFeeRate"], view["inviter"]) == (
        platform, inviter_rate, inviter.lower())


def test_payment_without_allowance_bubbles_up_the_token_error(contract_chain):
    chain = contract_chain
    mint_usdc(chain.w3, chain.dep.usdc, STRANGER.address, 100 * USDC, DEPLOYER.private_key)
    auth = chain.booking_auth("no-allowance", customer=STRANGER, amount=100 * USDC)
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(auth), chain.sign_booking(auth)],
                              STRANGER.private_key)
    assert (err.name, err.args_) == ("ERC20InsufficientAllowance", (chain.dep.escrow.lower(), 0, 100 * USDC))


def _permit(chain, owner, value, deadline, nonce=0, key=None):
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {"name": "USD Coin", "version": "1", "chainId": chain.dep.chain_id,
                   "verifyingContract": chain.dep.usdc},
        "message": {"owner": owner.address, "spender": chain.dep.escrow, "value": value, "nonce": nonce,
                    "deadline": deadline},
    }
    signed = Account.sign_message(encode_typed_data(full_message=typed), key or owner.private_key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def _allowance(chain, owner):
    (value,) = chain.call(chain.dep.usdc, usdc_abi(), "allowance", [owner, chain.dep.escrow], ["uint256"])
    return value


def test_pay_with_permit(contract_chain):
    chain = contract_chain
    amount = 42 * USDC
    mint_usdc(chain.w3, chain.dep.usdc, STRANGER.address, amount, DEPLOYER.private_key)
    assert _allowance(chain, STRANGER.address) == 0
    auth = chain.booking_auth("permit", customer=STRANGER, amount=amount, nonce=9)
    deadline = chain.latest_timestamp() + 600
    v, r, s = _permit(chain, STRANGER, amount, deadline)
    receipt = chain.escrow_send(
        "createAndPayBookingWithPermit",
        [chain.booking_tuple(auth), chain.sign_booking(auth), deadline, v, r, s],
        STRANGER.private_key,
    )
    assert chain.balances(STRANGER.address, chain.dep.escrow) == [0, amount]
    assert _allowance(chain, STRANGER.address) == 0
    assert [name for name, _ in chain.escrow_events(receipt)] == ["BookingCreatedAndPaid"]
    assert chain.booking(auth["bookingId"])["status"] == 1


def test_front_run_permit_does_not_grief_the_payment(contract_chain):
    chain = contract_chain
    amount = 7 * USDC
    mint_usdc(chain.w3, chain.dep.usdc, STRANGER.address, amount, DEPLOYER.private_key)
    deadline = chain.latest_timestamp() + 600
    v, r, s = _permit(chain, STRANGER, amount, deadline)
    # Someone copies the permit from the mempool and submits it first.
    chain.send(chain.dep.usdc, usdc_abi(), "permit", [STRANGER.address, chain.dep.escrow, amount, deadline, v, r, s],
               CUSTOMER2.private_key)
    assert _allowance(chain, STRANGER.address) == amount
    auth = chain.booking_auth("permit-frontrun", customer=STRANGER, amount=amount, nonce=10)
    chain.escrow_send("createAndPayBookingWithPermit",
                      [chain.booking_tuple(auth), chain.sign_booking(auth), deadline, v, r, s],
                      STRANGER.private_key)
    assert chain.balance(chain.dep.escrow) == amount


def test_permit_path_refusals(contract_chain):
    chain = contract_chain
    amount = 5 * USDC
    mint_usdc(chain.w3, chain.dep.usdc, STRANGER.address, amount, DEPLOYER.private_key)
    deadline = chain.latest_timestamp() + 600
    auth = chain.booking_auth("permit-bad", customer=STRANGER, amount=amount, nonce=11)
    sig = chain.sign_booking(auth)
    # A bad permit (signed by someone else) is swallowed; the missing allowance then fails the transfer.
    v, r, s = _permit(chain, STRANGER, amount, deadline, key=CUSTOMER2.private_key)
    err = chain.expect_revert("createAndPayBookingWithPermit", [chain.booking_tuple(auth), sig, deadline, v, r, s],
                              STRANGER.private_key)
    assert (err.name, err.args_) == ("ERC20InsufficientAllowance", (chain.dep.escrow.lower(), 0, amount))
    # Only the customer may use it.
    v, r, s = _permit(chain, STRANGER, amount, deadline)
    err = chain.expect_revert("createAndPayBookingWithPermit", [chain.booking_tuple(auth), sig, deadline, v, r, s],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("CallerNotCustomer", ())
    # And the backend authorization is still checked.
    bad_sig = chain.sign_booking(auth, key=STRANGER.private_key)
    err = chain.expect_revert("createAndPayBookingWithPermit",
                              [chain.booking_tuple(auth), bad_sig, deadline, v, r, s], STRANGER.private_key)
    assert (err.name, err.args_) == ("InvalidSignature", ())


def test_nonce_space_is_shared_with_cancellations(contract_chain):
    chain = contract_chain
    bid, auth = chain.create_paid("shared-nonce", nonce=500)
    cancel = chain.cancel_auth(bid, customer_amount=auth["amount"], nonce=501)
    chain.cancel(cancel, CUSTOMER.private_key)
    # A booking authorization with a nonce already consumed by a cancellation is refused.
    other = chain.booking_auth("shared-nonce-2", nonce=501)
    err = chain.expect_revert("createAndPayBooking", [chain.booking_tuple(other), chain.sign_booking(other)],
                              CUSTOMER.private_key)
    assert (err.name, err.args_) == ("NonceAlreadyUsed", (501,))


def test_two_customers_two_bookings(contract_chain):
    chain = contract_chain
    a = chain.booking_auth("two-a", customer=CUSTOMER, amount=10 * USDC, nonce=1)
    b = chain.booking_auth("two-b", customer=CUSTOMER2, provider=PROVIDER, amount=20 * USDC, nonce=2)
    chain.pay(a)
    chain.pay(b)
    assert chain.balance(chain.dep.escrow) == 30 * USDC
