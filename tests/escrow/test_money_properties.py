"""Property tests (hypothesis) of the money rules: completion fee splits, cancellation splits and
the cancellation policy always sum to the amount exactly, never go negative, respect the caps
of DESIGN.md (platform ≤ 2000 bps, inviter ≤ 1000 bps, no inviter ⇒ no inviter part)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from common.eth import format_amount
from escrow.cancellation import CUSTOMER, PROVIDER, cancellation_terms
from escrow.errors import InvalidInput
from escrow.models import Booking
from escrow.money import (
    BPS,
    MAX_INVITER_FEE_RATE,
    MAX_PLATFORM_FEE_RATE,
    UINT256_MAX,
    AmountError,
    check_fee_rates,
    parse_amount,
    split_cancellation,
    split_completion,
)

# Realistic amounts (1 base unit to 10^12 USDC) and the extremes up to uint256.
amounts = st.one_of(st.integers(1, 10**18), st.integers(1, UINT256_MAX))
platform_rates = st.integers(0, MAX_PLATFORM_FEE_RATE)
inviter_rates = st.integers(0, MAX_INVITER_FEE_RATE)
refund_shares = st.integers(0, BPS)


@st.composite
def rates(draw):
    """(platform rate, inviter rate, has inviter) as the contract allows them."""
    has_inviter = draw(st.booleans())
    return draw(platform_rates), draw(inviter_rates) if has_inviter else 0, has_inviter


def _assert_fees_within_caps(amount: int, platform: int, inviter: int) -> None:
    assert platform * BPS <= amount * MAX_PLATFORM_FEE_RATE
    assert inviter * BPS <= amount * MAX_INVITER_FEE_RATE


@given(amount=amounts, rate=rates())
def test_completion_split_sums_to_the_amount_and_respects_the_caps(amount, rate):
    platform_rate, inviter_rate, _ = rate
    split = split_completion(amount, platform_rate, inviter_rate)
    assert split.provider + split.platform + split.inviter == amount == split.total
    assert min(split.provider, split.platform, split.inviter) >= 0
    # Fees round down (what the contract computes); the provider gets the remainder.
    assert split.platform == amount * platform_rate // BPS
    assert split.inviter == amount * inviter_rate // BPS
    _assert_fees_within_caps(amount, split.platform, split.inviter)
    assert split.provider * BPS >= amount * (BPS - platform_rate - inviter_rate)
    if inviter_rate == 0:
        assert split.inviter == 0


@given(amount=amounts, refund_bps=refund_shares, rate=rates())
def test_cancellation_split_sums_to_the_amount_and_respects_the_caps(amount, refund_bps, rate):
    platform_rate, inviter_rate, _ = rate
    split = split_cancellation(amount, refund_bps, platform_rate, inviter_rate)
    assert split.customer + split.provider + split.platform + split.inviter == amount == split.total
    assert min(split.customer, split.provider, split.platform, split.inviter) >= 0
    assert split.customer == amount * refund_bps // BPS
    # Fees are taken only from what the customer does not get back, so they stay within the
    # caps of the kept part and, a fortiori, of the whole amount.
    kept = amount - split.customer
    _assert_fees_within_caps(kept, split.platform, split.inviter)
    _assert_fees_within_caps(amount, split.platform, split.inviter)
    if refund_bps == BPS:
        assert (split.provider, split.platform, split.inviter) == (0, 0, 0)
    if inviter_rate == 0:
        assert split.inviter == 0


@given(amount=amounts, refund_bps=st.one_of(st.integers(max_value=-1), st.integers(min_value=BPS + 1)))
def test_cancellation_split_refuses_a_refund_outside_0_to_100_percent(amount, refund_bps):
    with pytest.raises(ValueError):
        split_cancellation(amount, refund_bps, 1000, 0)


# -- the policy (escrow.cancellation) over any booking, any moment, any configuration -----------
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@st.composite
def policies(draw):
    partial_hours = draw(st.integers(0, 72))
    return {
        "CANCELLATION_PARTIAL_REFUND_HOURS": partial_hours,
        "CANCELLATION_FULL_REFUND_HOURS": draw(st.integers(partial_hours, 24 * 14)),
        "CANCELLATION_PARTIAL_REFUND_BPS": draw(refund_shares),
        "CANCELLATION_LATE_REFUND_BPS": draw(refund_shares),
    }


@given(
    amount=amounts,
    rate=rates(),
    # Stored rates may disagree with the inviter (e.g. an inviter rate left on a booking without
    # one): the policy must still never pay an inviter that does not exist.
    stray_inviter_rate=inviter_rates,
    lead_seconds=st.integers(-30 * 86400, 30 * 86400),
    requested_by=st.sampled_from([CUSTOMER, PROVIDER]),
    policy=policies(),
)
def test_cancellation_policy_pays_out_exactly_the_amount(
    amount, rate, stray_inviter_rate, lead_seconds, requested_by, policy,
):
    platform_rate, inviter_rate, has_inviter = rate
    booking = Booking(
        customer_address="0x" + "11" * 20,
        provider_address="0x" + "22" * 20,
        inviter_address="0x" + "33" * 20 if has_inviter else "",
        amount=amount,
        platform_fee_rate=platform_rate,
        inviter_fee_rate=inviter_rate if has_inviter else stray_inviter_rate,
        scheduled_at=NOW + timedelta(seconds=lead_seconds),
    )
    with override_settings(**policy):
        terms = cancellation_terms(booking, requested_by=requested_by, now=NOW)
    split = terms.split
    assert split.total == amount
    assert min(split.customer, split.provider, split.platform, split.inviter) >= 0
    _assert_fees_within_caps(amount, split.platform, split.inviter)
    if not has_inviter:
        assert split.inviter == 0
    if requested_by == PROVIDER:
        assert (terms.tier, split.customer) == ("provider_cancelled", amount)
    elif lead_seconds > policy["CANCELLATION_FULL_REFUND_HOURS"] * 3600:
        assert (terms.tier, split.customer) == ("full_refund", amount)
    else:
        assert terms.tier in ("partial_refund", "late")
        assert split.customer == amount * terms.refund_bps // BPS


@given(
    early=st.integers(-10 * 86400, 10 * 86400),
    later_by=st.integers(0, 10 * 86400),
)
def test_cancelling_later_never_refunds_more_with_the_default_policy(early, later_by):
    """With the default thresholds (full > 24 h, 50 % from 24 h to 2 h, then nothing)."""
    booking = Booking(
        amount=10**9, platform_fee_rate=1000, inviter_fee_rate=0, scheduled_at=NOW + timedelta(seconds=early),
    )
    sooner = cancellation_terms(booking, requested_by=CUSTOMER, now=NOW)
    later = cancellation_terms(booking, requested_by=CUSTOMER, now=NOW + timedelta(seconds=later_by))
    assert later.split.customer <= sooner.split.customer


# -- rate rules and amount parsing ---------------------------------------------------------------
@given(platform=st.integers(-5000, 5000), inviter=st.integers(-5000, 5000), has_inviter=st.booleans())
def test_fee_rates_are_accepted_exactly_within_the_caps(platform, inviter, has_inviter):
    allowed = (
        0 <= platform <= MAX_PLATFORM_FEE_RATE
        and 0 <= inviter <= MAX_INVITER_FEE_RATE
        and (has_inviter or inviter == 0)
    )
    if allowed:
        check_fee_rates(platform, inviter, has_inviter=has_inviter)
    else:
        with pytest.raises(InvalidInput) as excinfo:
            check_fee_rates(platform, inviter, has_inviter=has_inviter)
        assert excinfo.value.field in ("platform_fee_rate", "inviter_fee_rate")


@given(base_units=st.integers(1, UINT256_MAX))
def test_amounts_round_trip_between_base_units_and_decimal_strings(base_units):
    assert parse_amount(base_units) == base_units
    assert parse_amount(format_amount(base_units)) == base_units


@given(whole=st.integers(0, 10**12), digits=st.text("0123456789", min_size=7, max_size=12))
def test_more_than_six_decimals_are_refused(whole, digits):
    """Even "1.0000000": seven written decimals claim a precision USDC does not have."""
    with pytest.raises(AmountError):
        parse_amount(f"{whole}.{digits}")
