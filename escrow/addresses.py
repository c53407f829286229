"""Ethereum address input: accepted forms and the one normal form (EIP-55 checksum)."""
from __future__ import annotations

import re

from eth_utils import is_checksum_address, to_checksum_address

from common.eth import ZERO_ADDRESS

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
