"""EIP-712 authorizations signed by the backend signer, as BookingEscrow verifies them.

Types and domain are fixed by DESIGN.md (the type strings live in `contracts.artifacts`):
domain name "BookingEscrow", version "1", chainId = settings.CHAIN_ID, verifyingContract =
settings.ESCROW_CONTRACT_ADDRESS.

Speed matters here (authorize-payment is the hot path), so the digest is built directly:
the struct hash is `keccak(abi.encode(typehash, fields...))` with eth_abi, the domain
separator is cached per (chain id, contract), and the digest is signed with coincurve
(libsecp256k1). tests/escrow/test_signing.py checks the result byte for byte against
eth_account's `encode_typed_data` + `sign_message` and against the contract itself.

Every authorization gets a fresh nonce (`allocate_nonce`: a PostgreSQL sequence value, fetched in
blocks per process, above 64 random bits) and is recorded as a `SignatureNonce` row (digest and
message, never the signature key).
"""
from __future__ import annotations

import functools
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coincurve import PrivateKey
from django.conf import settings
from django.db import connection
from django.db.models import signals
from django.utils import timezone
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from common.db import server_binding_cursor
from common.eth import ZERO_ADDRESS
from contracts.artifacts import (
    BOOKING_AUTHORIZATION_TYPE,
    CANCELLATION_AUTHORIZATION_TYPE,
    EIP712_DOMAIN_NAME,
    EIP712_DOMAIN_VERSION,
)

from .models import Booking, SignatureKind, SignatureNonce
from .money import CancellationSplit

# Created by migration 0003_signature_nonce_sequence.
NONCE_SEQUENCE = "escrow_signature_nonce_seq"

EIP712_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


def _fields_of(type_string: str) -> list[dict[str, str]]:
    """`Name(type a,type b)` → [{"name": "a", "type": "type"}, ...] (the eth_account "types" shape)."""
    members = type_string[type_string.index("(") + 1 : -1].split(",")
    return [{"name": name, "type": typ} for typ, name in (member.split(" ") for member in members)]


@dataclass(frozen=True)
class TypedStruct:
    name: str
    type_string: str
    fields: list[dict[str, str]]
    typehash: bytes
    # ABI types of the encoded struct words: dynamic types (string) are hashed to bytes32.
    abi_types: tuple[str, ...]

    @classmethod
    def from_type_string(cls, type_string: str) -> TypedStruct:
        fields = _fields_of(type_string)
        abi_types = ("bytes32", *("bytes32" if f["type"] == "string" else f["type"] for f in fields))
        return cls(
            name=type_string[: type_string.index("(")],
            type_string=type_string,
            fields=fields,
            typehash=keccak(text=type_string),
            abi_types=abi_types,
        )

    def struct_hash(self, values: dict) -> bytes:
        words = [self.typehash]
        for f in self.fields:
            value = values[f["name"]]
            words.append(keccak(text=value) if f["type"] == "string" else value)
        return keccak(abi_encode(self.abi_types, words))

    def to_json(self, values: dict) -> dict[str, str]:
        """The message as the API returns it: uint256 as decimal strings, bytes32 as 0x hex."""
        out = {}
        for f in self.fields:
            value = values[f["name"]]
            if f["type"] == "uint256":
                out[f["name"]] = str(value)
            elif f["type"] == "bytes32":
                out[f["name"]] = "0x" + value.hex()
            else:
                out[f["name"]] = value
        return out


EIP712_DOMAIN = TypedStruct.from_type_string(EIP712_DOMAIN_TYPE)
BOOKING_AUTHORIZATION = TypedStruct.from_type_string(BOOKING_AUTHORIZATION_TYPE)
CANCELLATION_AUTHORIZATION = TypedStruct.from_type_string(CANCELLATION_AUTHORIZATION_TYPE)
STRUCT_FOR_KIND = {SignatureKind.PAYMENT: BOOKING_AUTHORIZATION, SignatureKind.CANCELLATION: CANCELLATION_AUTHORIZATION}


def current_domain() -> dict:
    return {
        "name": EIP712_DOMAIN_NAME,
        "version": EIP712_DOMAIN_VERSION,
        "chainId": settings.CHAIN_ID,
        "verifyingContract": settings.ESCROW_CONTRACT_ADDRESS,
    }


@functools.lru_cache(maxsize=8)
def domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    return EIP712_DOMAIN.struct_hash(
        {
            "name": EIP712_DOMAIN_NAME,
            "version": EIP712_DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": verifying_contract,
        }
    )


def typed_data_digest(struct: TypedStruct, values: dict) -> bytes:
    """EIP-712 digest: keccak(0x1901 ‖ domainSeparator ‖ structHash) for the configured domain."""
    separator = domain_separator(settings.CHAIN_ID, settings.ESCROW_CONTRACT_ADDRESS)
    return keccak(b"\x19\x01" + separator + struct.struct_hash(values))


def typed_data(struct: TypedStruct, values: dict) -> dict:
    """The full EIP-712 document (eth_account `encode_typed_data(full_message=...)` / eth_signTypedData_v4 shape)."""
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN.fields, struct.name: struct.fields},
        "primaryType": struct.name,
        "domain": current_domain(),
        "message": values,
    }


# -- the signer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _SigningKey:
    secret: object  # the settings.SIGNER_PRIVATE_KEY Secret this key was built from
    key: PrivateKey = field(repr=False)
    address: str


_signing_key_cache: _SigningKey | None = None


def _signing_key() -> _SigningKey:
    """The coincurve key for settings.SIGNER_PRIVATE_KEY, built once per process (and again if the setting changes)."""
    global _signing_key_cache
    secret = settings.SIGNER_PRIVATE_KEY
    cached = _signing_key_cache
    if cached is None or cached.secret is not secret:
        if secret is None:
            raise RuntimeError("SIGNER_PRIVATE_KEY is not configured")
        key = PrivateKey(bytes.fromhex(secret.reveal()[2:]))
        address = to_checksum_address(keccak(key.public_key.format(compressed=False)[1:])[-20:])
        cached = _signing_key_cache = _SigningKey(secret=secret, key=key, address=address)
    return cached


def signer_address() -> str:
    return _signing_key().address


def sign_digest(digest: bytes) -> bytes:
    """65-byte r ‖ s ‖ v signature (v = 27/28, low s) of a 32-byte digest, as OpenZeppelin ECDSA expects."""
    signature = _signing_key().key.sign_recoverable(digest, hasher=None)
    return signature[:64] + bytes([signature[64] + 27])


# -- nonces -------------------------------------------------------------------------------
# Sequence values fetched per database round trip. A process hands out its block itself, so
# authorize-payment costs one query less; values a process never used (it exited) are skipped
# for good, which is harmless: the contract only needs each nonce to be used at most once.
NONCE_BLOCK_SIZE = 32


class _NonceBlock:
    """Sequence values this process fetched and has not handed out yet (thread-safe, fork-aware)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.values: list[int] = []

    def take(self) -> int:
        with self.lock:
            if self.pid != os.getpid():  # a forked child must never reuse its parent's block
                self.pid, self.values = os.getpid(), []
            if not self.values:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT nextval(%s) FROM generate_series(1, %s)", [NONCE_SEQUENCE, NONCE_BLOCK_SIZE]
                    )
                    self.values = sorted((row[0] for row in cursor.fetchall()), reverse=True)
            return self.values.pop()


_nonce_block = _NonceBlock()


#: Random bits below the sequence value in a nonce.
NONCE_RANDOM_BITS = 64


def allocate_nonce() -> int:
    """A nonce no other caller ever gets, in this process or any other, before or after a restart:
    a value of a PostgreSQL sequence (which never hands a value out twice), fetched in blocks.

    Below it, 64 random bits: a database restored from a backup sets the sequence back and hands
    its later values out again, and the contract, which keeps every nonce it has seen
    (usedNonces), would refuse those payments until the sequence passed them. With the random
    part a value handed out again is still a new nonce (a repeat needs the same 64 random bits).
    The sequence stays on top, so nonces still grow and the unique index takes them at its end.
    """
    return (_nonce_block.take() << NONCE_RANDOM_BITS) | secrets.randbits(NONCE_RANDOM_BITS)


# -- the SignatureNonce row ------------------------------------------------------------------
@functools.cache
def _signature_nonce_insert() -> tuple[list, str]:
    quote = connection.ops.quote_name
    meta = SignatureNonce._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(meta.pk.column)}"
    )
    return fields, sql


def _insert_signature_nonce(record: SignatureNonce) -> None:
    """`record.save()` for a new row, as a prepared INSERT: on the authorize-payment path the ORM's
    SQL compilation and PostgreSQL's parsing cost more than the insert. Values are prepared by
    each field as save() does (pre_save: auto_now_add; get_db_prep_save) and the save signals are
    sent as save() sends them."""
    fields, sql = _signature_nonce_insert()
    signals.pre_save.send(sender=SignatureNonce, instance=record, raw=False, using=connection.alias, update_fields=None)
    params = [f.get_db_prep_save(f.pre_save(record, True), connection) for f in fields]
    with server_binding_cursor() as cursor:
        cursor.execute(sql, params, prepare=True)
        record.pk = cursor.fetchone()[0]
    record._state.adding = False
    record._state.db = connection.alias
    signals.post_save.send(
        sender=SignatureNonce, instance=record, created=True, update_fields=None, raw=False, using=connection.alias
    )


# -- authorizations -----------------------------------------------------------------------
@dataclass(frozen=True)
class SignedAuthorization:
    kind: str
    primary_type: str
    domain: dict
    types: dict
    message: dict  # JSON form: uint256 as decimal strings, bytes32 as 0x hex
    digest: str
    signature: str
    nonce: int
    expiry: int
    expires_at: datetime
    record: SignatureNonce = field(repr=False)

    @property
    def ethers(self) -> dict:
        """The same typed data as ethers v6 takes it: `verifyTypedData(domain, types, value, sig)`.
        `types` holds the struct alone: ethers derives the domain's type from `domain` and refuses
        an `EIP712Domain` entry ("ambiguous primary types"), which eth_signTypedData_v4 requires."""
        return {
            "domain": self.domain,
            "types": {self.primary_type: self.types[self.primary_type]},
            "primaryType": self.primary_type,
            "value": self.message,
        }


def _issue(booking: Booking, kind: str, values: dict, *, now: datetime | None) -> SignedAuthorization:
    struct = STRUCT_FOR_KIND[kind]
    now = now or timezone.now()
    expiry = int(now.timestamp()) + settings.AUTHORIZATION_TTL_SECONDS
    values = {**values, "expiry": expiry, "nonce": allocate_nonce()}
    digest = typed_data_digest(struct, values)
    signature = sign_digest(digest)
    message = struct.to_json(values)
    expires_at = datetime.fromtimestamp(expiry, tz=UTC)
    record = SignatureNonce(
        nonce=values["nonce"],
        booking=booking,
        kind=kind,
        expires_at=expires_at,
        digest="0x" + digest.hex(),
        payload=message,
    )
    _insert_signature_nonce(record)
    return SignedAuthorization(
        kind=kind,
        primary_type=struct.name,
        domain=current_domain(),
        types={"EIP712Domain": EIP712_DOMAIN.fields, struct.name: struct.fields},
        message=message,
        digest=record.digest,
        signature="0x" + signature.hex(),
        nonce=values["nonce"],
        expiry=expiry,
        expires_at=expires_at,
        record=record,
    )


def booking_id_bytes(booking: Booking) -> bytes:
    return bytes.fromhex(booking.chain_booking_id[2:])


def sign_payment_authorization(booking: Booking, *, now: datetime | None = None) -> SignedAuthorization:
    """A fresh BookingAuthorization for `booking` (new nonce, expiry now + AUTHORIZATION_TTL_SECONDS)."""
    return _issue(
        booking,
        SignatureKind.PAYMENT,
        {
            "bookingId": booking_id_bytes(booking),
            "customer": booking.customer_address,
            "provider": booking.provider_address,
            "inviter": booking.inviter_address or ZERO_ADDRESS,
            "amount": int(booking.amount),
            "platformFeeRate": booking.platform_fee_rate,
            "inviterFeeRate": booking.inviter_fee_rate if booking.inviter_address else 0,
        },
        now=now,
    )


def sign_cancellation_authorization(
    booking: Booking, split: CancellationSplit, reason: str, *, now: datetime | None = None
) -> SignedAuthorization:
    """A fresh CancellationAuthorization paying out `split` (which must sum to the booking's amount)."""
    if split.total != int(booking.amount):
        raise ValueError("cancellation split does not sum to the booking amount")
    return _issue(
        booking,
        SignatureKind.CANCELLATION,
        {
            "bookingId": booking_id_bytes(booking),
            "customerAmount": split.customer,
            "providerAmount": split.provider,
            "platformAmount": split.platform,
            "inviterAmount": split.inviter,
            "reason": reason,
        },
        now=now,
    )
