"""Ethereum and USDC helpers every floor uses: the zero address, EIP-55 checksums, address
equality, uint256 bounds and USDC base-unit formatting."""
from __future__ import annotations

import functools

from eth_utils import keccak

ZERO_ADDRESS = "0x" + "0" * 40
UINT256_MAX = 2**256 - 1
USDC_DECIMALS = 6
UNIT = 10**USDC_DECIMALS


@functools.lru_cache(maxsize=65536)
def checksum(address: str) -> str:
    """EIP-55 form of a lower/any-case hex address (the project's normal form).

    Same result as eth_utils.to_checksum_address, ~10x faster and cached: catch-up meets
    the same providers and customers over and over.
    """
    digits = address[2:].lower()
    digest = keccak(digits.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(digits, digest, strict=False))


def same_address(a: str | None, b: str | None) -> bool:
    """Address equality ignoring case; "" and the zero address both mean "none"."""
    a = (a or ZERO_ADDRESS).lower()
    b = (b or ZERO_ADDRESS).lower()
    return a == b


def format_amount(base_units: int) -> str:
    """Base units as a decimal USDC string with exactly 6 decimals ("100.500000")."""
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), UNIT)
    return f"{sign}{whole}.{frac:06d}"


def usdc(base_units) -> str:
    """Base units for people: "100.500000 USDC" ("" for none)."""
    return "" if base_units is None else f"{format_amount(int(base_units))} USDC"
