"""Ethereum address input: accepted forms and the one normal form (EIP-55 checksum), and the
addresses of our own contracts, which can never be paid."""
from __future__ import annotations

import re

from django.conf import settings
from eth_utils import is_checksum_address, to_checksum_address

from common.eth import ZERO_ADDRESS, same_address

from .errors import InvalidInput

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def normalize_address(value, *, field: str = "address") -> str:
    """Return the checksummed form of a 0x address given checksummed or in one case.

    A mixed-case address whose checksum is wrong is refused rather than "corrected": mixed
    case claims an EIP-55 checksum, and a wrong one usually means a mistyped address.
    """
    if not isinstance(value, str) or not _HEX_ADDRESS.fullmatch(value):
        raise InvalidInput(field, "must be a 0x-prefixed 20-byte hex address")
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(value):
        raise InvalidInput(field, "has an invalid EIP-55 checksum (send it checksummed or all lower-case)")
    if value == ZERO_ADDRESS:
        raise InvalidInput(field, "must not be the zero address")
    return to_checksum_address(value)


def contract_of_ours(address: str) -> str | None:
    """"the escrow contract" or "the USDC contract" when `address` is one of them, else None.

    Neither can ever move USDC it is paid: a provider or inviter share sent to the escrow stays
    in the escrow for good, and one sent to the token contract is lost."""
    if same_address(address, settings.ESCROW_CONTRACT_ADDRESS):
        return "the escrow contract"
    if same_address(address, settings.USDC_CONTRACT_ADDRESS):
        return "the USDC contract"
    return None
