"""Money rules: USDC base units as Python ints, fee splits that round down and always sum up.

Nothing here ever touches float. Amounts travel as int (6-decimal USDC base units) and are
stored as NUMERIC(78,0) (see `common.fields.Uint256Field`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from common.eth import UINT256_MAX, USDC_DECIMALS

BPS = 10_000
MAX_PLATFORM_FEE_RATE = 2_000
MAX_INVITER_FEE_RATE = 1_000


class AmountError(ValueError):
    """The amount is not a valid USDC amount; the message says why."""


_PLAIN_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_amount(value) -> int:
    """Parse a USDC amount from the API into base units.

    Accepts a decimal string ("100.50", "100") meaning whole USDC, or an int meaning base
    units. Rejects floats (they cannot carry money exactly), more than 6 decimals,
    negatives, zero, and anything above uint256.
    """
    if isinstance(value, bool):
        raise AmountError("must be a decimal string like \"100.50\" or an integer number of base units")
    if isinstance(value, int):
        base_units = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 100:
            raise AmountError("must be a decimal string like \"100.50\" or an integer number of base units")
        # ASCII digits only: Decimal() alone would also take "1_000", exponents, "+5", "NaN"
        # and other scripts' digits.
        if not _PLAIN_DECIMAL.fullmatch(text):
            raise AmountError("must be written as plain digits with an optional decimal point")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise AmountError("is not a decimal number") from None
        sign, digits, exponent = number.as_tuple()
        if exponent < -USDC_DECIMALS:
            raise AmountError(f"has more than {USDC_DECIMALS} decimal places")
        # Integer arithmetic on the digits: Decimal multiplication would round to the context's
        # 28 significant digits and silently change amounts above 10^22 USDC.
        base_units = int("".join(map(str, digits))) * 10 ** (exponent + USDC_DECIMALS)
        if sign:
            base_units = -base_units
    else:
        raise AmountError("must be a decimal string like \"100.50\" or an integer number of base units")
    if base_units < 0:
        raise AmountError("must not be negative")
    if base_units == 0:
        raise AmountError("must be greater than zero")
    if base_units > UINT256_MAX:
        raise AmountError("is larger than uint256 allows")
    return base_units



@dataclass(frozen=True)
class FeeSplit:
    provider: int
    platform: int
    inviter: int

    @property
    def total(self) -> int:
        return self.provider + self.platform + self.inviter


def split_completion(amount: int, platform_fee_rate: int, inviter_fee_rate: int) -> FeeSplit:
    """The contract's completion payout: fees round down, the provider gets the remainder."""
    platform = amount * platform_fee_rate // BPS
    inviter = amount * inviter_fee_rate // BPS
    return FeeSplit(provider=amount - platform - inviter, platform=platform, inviter=inviter)


def check_fee_rates(platform_fee_rate: int, inviter_fee_rate: int, *, has_inviter: bool) -> None:
    """The contract's rate rules: caps, and no inviter fee without an inviter. Raises InvalidInput."""
    from .errors import InvalidInput

    for field, rate, cap in (
        ("platform_fee_rate", platform_fee_rate, MAX_PLATFORM_FEE_RATE),
        ("inviter_fee_rate", inviter_fee_rate, MAX_INVITER_FEE_RATE),
    ):
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise InvalidInput(field, "must be an integer number of basis points")
        if not 0 <= rate <= cap:
            raise InvalidInput(field, f"must be between 0 and {cap} basis points")
    if not has_inviter and inviter_fee_rate != 0:
        raise InvalidInput("inviter_fee_rate", "must be 0 when there is no inviter")


@dataclass(frozen=True)
class CancellationSplit:
    """How a cancelled booking's escrowed amount is paid out (the CancellationAuthorization amounts)."""

    customer: int
    provider: int
    platform: int
    inviter: int

    @property
    def total(self) -> int:
        return self.customer + self.provider + self.platform + self.inviter


def split_cancellation(
    amount: int, refund_bps: int, platform_fee_rate: int, inviter_fee_rate: int,
) -> CancellationSplit:
    """The customer gets `refund_bps` of the amount (rounded down); the rest is paid out like
    a completion of that smaller amount (`split_completion`): fees round down at the booking's
    rates and the provider gets the remainder. The parts therefore sum to `amount` exactly,
    none is negative, and each fee stays within its cap of the amount.
    """
    if not 0 <= refund_bps <= BPS:
        raise ValueError("refund_bps must be between 0 and 10000")
    refund = amount * refund_bps // BPS
    kept = split_completion(amount - refund, platform_fee_rate, inviter_fee_rate)
    return CancellationSplit(customer=refund, provider=kept.provider, platform=kept.platform, inviter=kept.inviter)
