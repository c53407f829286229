"""Sign-In with Ethereum (EIP-4361): a strict parser for the message text and the checks a
relying party must make before it trusts the address in it.

The message must match the EIP-4361 ABNF exactly (no extra, missing, reordered or empty
lines; no trailing newline), because the signature covers the exact text: accepting a
"close enough" message would mean trusting terms the parser did not understand.

Checks made by `verify_sign_in`, in order:
  * the text parses (`parse_message`);
  * domain is one of settings.SIWE_DOMAIN; URI is http(s) on that same authority;
  * Version is 1 and Chain ID equals settings.CHAIN_ID;
  * Issued At is not in the future (CLOCK_SKEW allowed) nor older than the nonce lifetime;
    Expiration Time, if present, is in the future; Not Before, if present, has passed;
  * the signature is the address's own: an EIP-191 (personal_sign) signature that recovers
    the message's address (an externally owned account: no RPC call), or else, for an
    address with code, one the contract accepts through EIP-1271 `isValidSignature` of the
    message's EIP-191 hash (a smart-contract wallet, see escrow.contract_wallets; asked only
    when ecrecover does not give the address, so a wrong signature costs one eth_getCode,
    and sign-in is throttled per client address);
  * the nonce was issued by `issue_sign_in_nonce` and is consumed atomically (single use).
    It is consumed last, so a request that fails any other check does not burn it.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct
from eth_utils import is_checksum_address

from . import contract_wallets
from .errors import InvalidInput

MAX_MESSAGE_LENGTH = 4096
# A smart-contract wallet's signature may be longer than 65 bytes (several owners, passkey data).
MAX_SIGNATURE_BYTES = 2048
# Client clocks drift; an Issued At this far in the future is still accepted.
CLOCK_SKEW = timedelta(seconds=60)
NONCE_CACHE_PREFIX = "siwe:nonce:"

_HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"
# RFC 3986 pieces, as far as EIP-4361 uses them.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_AUTHORITY = re.compile(
    rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:%]*@)?"  # userinfo@
    rf"(?:\[[0-9A-Fa-f:.]+\]|[{_UNRESERVED}{_SUB_DELIMS}%]+)"  # [IP-literal] or host
    r"(?::[0-9]*)?"  # :port
)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_STATEMENT = re.compile(rf"[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS} ]+")
_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+.\-]*:[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS}%]+")
_NONCE = re.compile(r"[A-Za-z0-9]{8,64}")
_CHAIN_ID = re.compile(r"[0-9]{1,20}")
_REQUEST_ID = re.compile(rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|%[0-9A-Fa-f]{{2}})*")
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_SIGNATURE = re.compile(r"0x(?:[0-9a-fA-F]{2})+")


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    scheme: str | None = None
    statement: str | None = None
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = field(default_factory=tuple)


def _bad(reason: str) -> InvalidInput:
    return InvalidInput("message", reason)


def _parse_datetime(text: str, term: str) -> datetime:
    match = _DATE_TIME.fullmatch(text)
    if not match:
        raise _bad(f"{term} must be an RFC 3339 date-time such as 2026-01-01T12:00:00Z")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    # Python keeps microseconds; extra digits of precision carry no meaning for these checks.
    iso = f"{year}-{month}-{day}T{hour}:{minute}:{second}"
    if fraction:
        iso += "." + (fraction + "000000")[:6]
    iso += "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(iso).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(f"{term} is not a valid date-time") from None


def parse_message(text: str) -> SiweMessage:
    """Parse EIP-4361 message text strictly; raises InvalidInput("message", reason)."""
    if not isinstance(text, str) or not text:
        raise _bad("must be an EIP-4361 message")
    if len(text) > MAX_MESSAGE_LENGTH:
        raise _bad(f"is longer than {MAX_MESSAGE_LENGTH} characters")
    if "\r" in text:
        raise _bad("lines must end with LF, not CRLF")
    lines = text.split("\n")

    def take_line(index: int, what: str) -> str:
        if index >= len(lines):
            raise _bad(f"ends before the {what} line")
        return lines[index]

    header = take_line(0, "header")
    if not header.endswith(_HEADER_SUFFIX):
        raise _bad(f'first line must be "<domain>{_HEADER_SUFFIX}"')
    origin = header[: -len(_HEADER_SUFFIX)]
    scheme = None
    if "://" in origin:
        scheme, origin = origin.split("://", 1)
        if not _SCHEME.fullmatch(scheme):
            raise _bad("scheme in the first line is not a valid URI scheme")
    if not origin or not _AUTHORITY.fullmatch(origin):
        raise _bad("domain in the first line is not a valid RFC 3986 authority")

    address = take_line(1, "address")
    if not _ADDRESS.fullmatch(address):
        raise _bad("second line must be a 0x-prefixed 20-byte hex address")
    if not is_checksum_address(address):
        raise _bad("address must be EIP-55 checksummed")
    if take_line(2, "blank") != "":
        raise _bad("a blank line must follow the address")

    # address LF LF [statement LF] LF "URI: ..."
    index = 3
    statement = None
    if take_line(3, "statement") != "":
        statement = lines[3]
        if not _STATEMENT.fullmatch(statement):
            raise _bad("statement contains characters EIP-4361 does not allow")
        if take_line(4, "blank") != "":
            raise _bad("a blank line must follow the statement")
        index = 5
    else:
        index = 4

    def tagged(tag: str, *, required: bool) -> str | None:
        nonlocal index
        if index < len(lines) and lines[index].startswith(tag):
            value = lines[index][len(tag) :]
            index += 1
            return value
        if required:
            raise _bad(f'expected a "{tag.strip()}" line (line {index + 1})')
        return None

    uri = tagged("URI: ", required=True)
    if not _URI.fullmatch(uri):
        raise _bad("URI is not a valid RFC 3986 URI")
    version = tagged("Version: ", required=True)
    if version != "1":
        raise _bad("Version must be 1")
    chain_id_text = tagged("Chain ID: ", required=True)
    if not _CHAIN_ID.fullmatch(chain_id_text):
        raise _bad("Chain ID must be a decimal number")
    nonce = tagged("Nonce: ", required=True)
    if not _NONCE.fullmatch(nonce):
        raise _bad("Nonce must be 8 to 64 letters and digits")
    issued_at = _parse_datetime(tagged("Issued At: ", required=True), "Issued At")
    expiration_text = tagged("Expiration Time: ", required=False)
    expiration_time = None if expiration_text is None else _parse_datetime(expiration_text, "Expiration Time")
    not_before_text = tagged("Not Before: ", required=False)
    not_before = None if not_before_text is None else _parse_datetime(not_before_text, "Not Before")
    request_id = tagged("Request ID: ", required=False)
    if request_id is not None and not _REQUEST_ID.fullmatch(request_id):
        raise _bad("Request ID contains characters EIP-4361 does not allow")
    resources: list[str] = []
    if index < len(lines) and lines[index] == "Resources:":
        index += 1
        while index < len(lines) and lines[index].startswith("- "):
            resource = lines[index][2:]
            if not _URI.fullmatch(resource):
                raise _bad(f"resource {len(resources) + 1} is not a valid RFC 3986 URI")
            resources.append(resource)
            index += 1
    if index != len(lines):
        raise _bad(f"unexpected content on line {index + 1} (terms must be in EIP-4361 order, no trailing newline)")

    return SiweMessage(
        domain=origin,
        address=address,
        uri=uri,
        version=version,
        chain_id=int(chain_id_text),
        nonce=nonce,
        issued_at=issued_at,
        scheme=scheme,
        statement=statement,
        expiration_time=expiration_time,
        not_before=not_before,
        request_id=request_id,
        resources=tuple(resources),
    )


# -- nonces -------------------------------------------------------------------------------
def issue_sign_in_nonce() -> str:
    """A random single-use nonce, remembered in the cache (Redis) for SIWE_NONCE_TTL_SECONDS."""
    nonce = secrets.token_hex(16)  # 32 hex characters: EIP-4361 wants alphanumerics only
    cache.set(NONCE_CACHE_PREFIX + nonce, "1", timeout=settings.SIWE_NONCE_TTL_SECONDS)
    return nonce


def consume_sign_in_nonce(nonce: str) -> bool:
    """True exactly once per issued nonce: Redis DEL is atomic, so two racing requests cannot both win."""
    return bool(cache.delete(NONCE_CACHE_PREFIX + nonce))


# -- verification -------------------------------------------------------------------------
def _check_terms(message: SiweMessage, now: datetime) -> None:
    allowed_domains = {d.lower() for d in settings.SIWE_DOMAIN}
    if message.domain.lower() not in allowed_domains:
        raise _bad(f"domain {message.domain!r} is not this service")
    if message.scheme is not None and message.scheme.lower() not in ("http", "https"):
        raise _bad("scheme must be http or https")
    try:
        uri = urlsplit(message.uri)
    except ValueError:  # e.g. an unbalanced [ ] host, which the URI grammar lets through
        raise _bad("URI is not a valid URI") from None
    if uri.scheme.lower() not in ("http", "https") or uri.netloc.lower() != message.domain.lower():
        raise _bad("URI must be an http(s) URI on the message's domain")
    if message.chain_id != settings.CHAIN_ID:
        raise _bad(f"Chain ID must be {settings.CHAIN_ID}")
    if message.issued_at > now + CLOCK_SKEW:
        raise _bad("Issued At is in the future")
    if message.issued_at < now - timedelta(seconds=settings.SIWE_NONCE_TTL_SECONDS) - CLOCK_SKEW:
        raise _bad("Issued At is too old; request a new nonce and sign again")
    if message.expiration_time is not None and message.expiration_time <= now:
        raise _bad("the message has expired (Expiration Time)")
    if message.not_before is not None and message.not_before > now:
        raise _bad("the message is not valid yet (Not Before)")


def _signature_bytes(signature: str) -> bytes:
    if (
        not isinstance(signature, str)
        or len(signature) > 2 + 2 * MAX_SIGNATURE_BYTES
        or not _SIGNATURE.fullmatch(signature)
    ):
        raise InvalidInput(
            "signature",
            "must be a 65-byte signature as 0x followed by 130 hex digits (a contract wallet's "
            f"EIP-1271 signature: 0x hex, at most {MAX_SIGNATURE_BYTES} bytes)",
        )
    return bytes.fromhex(signature[2:])


def recover_signer(message_text: str, signature: bytes) -> str:
    """The address whose EIP-191 personal_sign signature of `message_text` this is."""
    if len(signature) != 65:
        raise InvalidInput("signature", "must be a 65-byte signature as 0x followed by 130 hex digits")
    try:
        return Account.recover_message(encode_defunct(text=message_text), signature=signature)
    except Exception:  # eth_keys raises several types (BadSignature, ValueError) for malformed r/s/v
        raise InvalidInput("signature", "is not a valid secp256k1 signature") from None


def _check_signature(message: SiweMessage, message_text: str, signature_hex: str) -> None:
    """The message's address made this signature: by its key (ecrecover), or, for a contract
    wallet, by its own say (EIP-1271). chain_events.rpc.RpcError when the node cannot be asked."""
    signature = _signature_bytes(signature_hex)
    try:
        if recover_signer(message_text, signature) == message.address:
            return
        refusal = InvalidInput("signature", "was not made by the message's address")
    except InvalidInput as exc:
        refusal = exc
    # No key recovers to a smart-contract wallet's address: the contract itself says yes or no.
    if not contract_wallets.is_contract(message.address):
        raise refusal
    if not contract_wallets.accepts_signature(message.address, defunct_hash_message(text=message_text), signature):
        raise InvalidInput(
            "signature", "was not accepted by the message's address, a contract wallet (EIP-1271 isValidSignature)"
        )


def verify_sign_in(message_text: str, signature: str, *, now: datetime | None = None) -> SiweMessage:
    """Run every EIP-4361 relying-party check (see the module docstring); returns the verified message."""
    now = now or timezone.now()
    message = parse_message(message_text)
    _check_terms(message, now)
    _check_signature(message, message_text, signature)
    if not consume_sign_in_nonce(message.nonce):
        raise _bad("Nonce is unknown, expired or already used; request a new one")
    return message
