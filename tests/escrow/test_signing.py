"""EIP-712 signing: our fast digest + coincurve signature equal eth_account's reference
implementation byte for byte, and the contract on anvil computes the same digests and
recognises the backend signer."""
from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from escrow.models import SignatureKind, SignatureNonce
from escrow.money import split_cancellation
from escrow.signing import (
    BOOKING_AUTHORIZATION,
    CANCELLATION_AUTHORIZATION,
    domain_separator,
    sign_cancellation_authorization,
    sign_payment_authorization,
    signer_address,
    typed_data,
)
from tests.chain_harness import booking_auth_tuple, cancellation_auth_tuple

pytestmark = pytest.mark.django_db


def _typed_values(struct, message: dict) -> dict:
    """The API's JSON message back to typed values (uint256 from decimal strings, bytes32 from hex)."""
    out = {}
    for f in struct.fields:
        value = message[f["name"]]
        if f["type"] == "uint256":
            value = int(value)
        elif f["type"] == "bytes32":
            value = bytes.fromhex(value[2:])
        out[f["name"]] = value
    return out


def _reference(struct, signed, settings):
    signable = encode_typed_data(full_message=typed_data(struct, _typed_values(struct, signed.message)))
    return signable, Account.sign_message(signable, private_key=settings.SIGNER_PRIVATE_KEY.reveal())


def test_payment_authorization_matches_eth_account_byte_for_byte(customer, provider, inviter, make_booking, settings):
    booking = make_booking(customer, provider, inviter=inviter.address, amount="1234.567891")
    signed = sign_payment_authorization(booking)
    signable, reference = _reference(BOOKING_AUTHORIZATION, signed, settings)
    assert signed.signature == "0x" + bytes(reference.signature).hex()
    assert signed.digest == "0x" + bytes(reference.message_hash).hex()
    assert Account.recover_message(signable, signature=bytes.fromhex(signed.signature[2:])) == signer_address()
    assert signed.message["amount"] == "1234567891" and signed.message["inviterFeeRate"] == "500"
    record = SignatureNonce.objects.get(nonce=signed.nonce)
    assert (record.kind, record.booking_id, record.digest) == (SignatureKind.PAYMENT, booking.pk, signed.digest)
    assert "signature" not in record.payload


def test_cancellation_authorization_matches_eth_account_with_a_unicode_reason(
    customer, provider, make_booking, settings,
):
    booking = make_booking(customer, provider)
    split = split_cancellation(int(booking.amount), 5000, booking.platform_fee_rate, 0)
    signed = sign_cancellation_authorization(booking, split, "Grippe — désolé 🤒")
    signable, reference = _reference(CANCELLATION_AUTHORIZATION, signed, settings)
    assert signed.signature == "0x" + bytes(reference.signature).hex()
    assert Account.recover_message(signable, signature=bytes.fromhex(signed.signature[2:])) == signer_address()


def test_a_split_that_does_not_sum_to_the_amount_is_never_signed(customer, provider, make_booking):
    booking = make_booking(customer, provider)
    bad = split_cancellation(int(booking.amount) + 1, 0, 1000, 0)
    with pytest.raises(ValueError):
        sign_cancellation_authorization(booking, bad, "x")
    assert not SignatureNonce.objects.exists()


@pytest.mark.chain
def test_the_contract_computes_the_same_digests_and_trusts_our_signer(
    chain_settings, customer, provider, inviter, make_booking,
):
    chain = chain_settings
    escrow = chain.escrow_contract.functions
    assert escrow.signer().call() == signer_address()
    assert escrow.domainSeparator().call() == domain_separator(chain.chain_id, chain.escrow)

    booking = make_booking(customer, provider, inviter=inviter.address)
    payment = sign_payment_authorization(booking)
    assert "0x" + escrow.hashBookingAuthorization(booking_auth_tuple(payment.message)).call().hex() == payment.digest

    split = split_cancellation(int(booking.amount), 2500, booking.platform_fee_rate, booking.inviter_fee_rate)
    cancellation = sign_cancellation_authorization(booking, split, "Grippe — désolé 🤒")
    digest = escrow.hashCancellationAuthorization(cancellation_auth_tuple(cancellation.message)).call()
    assert "0x" + digest.hex() == cancellation.digest
