"""MockERC1271Wallet: the smart-contract wallet the sign-in and payment tests use (real bytecode on anvil).

It answers EIP-1271 like a real wallet (the magic value for its owner's signature, never a
revert for a bad one) and pays a booking itself through `execute`, so the escrow sees the
wallet, not its owner, as the customer.
"""

from __future__ import annotations

from eth_account import Account
from eth_utils import keccak

from contracts.anvil import DEPLOYER
from contracts.artifacts import escrow_abi, load_artifact, usdc_abi
from contracts.deploy import deploy_contract, encode_call, mint_usdc
from contracts.testing import CUSTOMER, MAX_UINT256, PROVIDER, STRANGER, USDC, Reverted, booking_id

MAGIC_VALUE = bytes.fromhex("1626ba7e")
INVALID = bytes.fromhex("ffffffff")


def _wallet_abi():
    return load_artifact("MockERC1271Wallet")["abi"]


def _deploy_wallet(chain, owner=CUSTOMER) -> str:
    return deploy_contract(chain.w3, "MockERC1271Wallet", [owner.address], DEPLOYER.private_key)


def _is_valid(chain, wallet: str, digest: bytes, signature: bytes) -> bytes:
    (answer,) = chain.call(wallet, _wallet_abi(), "isValidSignature", [digest, signature], ["bytes4"])
    return answer


def test_the_owners_signature_of_the_hash_is_valid_and_nothing_else_is(contract_chain):
    wallet = _deploy_wallet(contract_chain)
    digest = keccak(text="sign in to BookMe")
    by_owner = bytes(Account.unsafe_sign_hash(digest, CUSTOMER.private_key).signature)
    by_stranger = bytes(Account.unsafe_sign_hash(digest, STRANGER.private_key).signature)
    assert _is_valid(contract_chain, wallet, digest, by_owner) == MAGIC_VALUE
    assert _is_valid(contract_chain, wallet, keccak(text="another hash"), by_owner) == INVALID
    assert _is_valid(contract_chain, wallet, digest, by_stranger) == INVALID
    # Malformed signatures are answered "invalid", not with a revert.
    for garbage in (b"", b"\x01" * 10, b"\x00" * 65, by_owner + b"\x00"):
        assert _is_valid(contract_chain, wallet, digest, garbage) == INVALID
    (owner,) = contract_chain.call(wallet, _wallet_abi(), "owner", [], ["address"])
    assert owner.lower() == CUSTOMER.address.lower()


def test_the_wallet_pays_a_booking_as_its_customer(contract_chain):
    chain = contract_chain
    wallet = _deploy_wallet(chain)
    mint_usdc(chain.w3, chain.dep.usdc, wallet, 500 * USDC, DEPLOYER.private_key)
    approve = encode_call(usdc_abi(), "approve", [chain.dep.escrow, MAX_UINT256])
    chain.send(wallet, _wallet_abi(), "execute", [chain.dep.usdc, approve], CUSTOMER.private_key)

    auth = chain.booking_auth("wallet-booking", customer=wallet, provider=PROVIDER, amount=120 * USDC)
    pay = encode_call(escrow_abi(), "createAndPayBooking", [chain.booking_tuple(auth), chain.sign_booking(auth)])
    receipt = chain.send(wallet, _wallet_abi(), "execute", [chain.dep.escrow, pay], CUSTOMER.private_key)

    [event] = [args for name, args in chain.escrow_events(receipt) if name == "BookingCreatedAndPaid"]
    assert event["customer"] == wallet and event["amount"] == 120 * USDC
    assert chain.booking(booking_id("wallet-booking"))["customer"].lower() == wallet.lower()
    assert chain.balance(wallet) == 380 * USDC


def test_only_the_owner_executes_and_a_failing_call_reverts_with_the_targets_error(contract_chain):
    chain = contract_chain
    wallet = _deploy_wallet(chain)
    refused = chain.expect_revert("execute", [chain.dep.usdc, b""], STRANGER.private_key, to=wallet, abi=_wallet_abi())
    assert refused.selector == "0x" + keccak(text="CallerNotOwner()").hex()[:8]

    # The owner pays a booking whose customer is not the wallet: the escrow's CallerNotCustomer comes back.
    auth = chain.booking_auth("not-the-wallets", customer=CUSTOMER, provider=PROVIDER)
    pay = encode_call(escrow_abi(), "createAndPayBooking", [chain.booking_tuple(auth), chain.sign_booking(auth)])
    bubbled = chain.expect_revert("execute", [chain.dep.escrow, pay], CUSTOMER.private_key, to=wallet,
                                  abi=_wallet_abi())
    assert isinstance(bubbled, Reverted) and bubbled.name == "CallerNotCustomer"
