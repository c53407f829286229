"""Property test: payouts always sum to the amount, and the escrow holds exactly the sum of
the amounts of the bookings still Paid."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.anvil import OPERATOR
from contracts.testing import CUSTOMER, CUSTOMER2, INVITER, PROVIDER, PROVIDER2, ZERO_ADDRESS

booking_strategy = st.fixed_dictionaries({
    "amount": st.one_of(st.integers(1, 1_000), st.integers(1, 10**11)),
    "platform_rate": st.integers(0, 2000),
    "inviter": st.booleans(),
    "inviter_rate": st.integers(0, 1000),
    "customer2": st.booleans(),
    # what happens to it: kept paid, completed by the customer, by the operator, cancelled with
    # a split (weights), emergency-cancelled
    "action": st.sampled_from(["keep", "complete", "operator", "cancel", "emergency"]),
    "weights": st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)),
})


def _cancel_split(amount, weights, has_inviter):
    w_customer, w_provider, w_platform, w_inviter = weights
    if not has_inviter:
        w_inviter = 0
    total = w_customer + w_provider + w_platform + w_inviter or 1
    provider = amount * w_provider // total
    platform = amount * w_platform // total
    inviter = amount * w_inviter // total
    return amount - provider - platform - inviter, provider, platform, inviter


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bookings=st.lists(booking_strategy, min_size=1, max_size=3))
def test_payout_parts_sum_and_escrow_balance_invariant(contract_chain, bookings):
    chain = contract_chain
    snap = chain.snapshot()
    try:
        escrow = chain.dep.escrow
        assert chain.balance(escrow) == 0
        ids = []
        for i, b in enumerate(bookings):
            inviter = INVITER.address if b["inviter"] else ZERO_ADDRESS
            bid, _ = chain.create_paid(
                f"prop-{i}",
                customer=CUSTOMER2 if b["customer2"] else CUSTOMER,
                provider=PROVIDER2 if b["customer2"] else PROVIDER,
                amount=b["amount"], inviter=inviter, platform_fee_rate=b["platform_rate"],
                inviter_fee_rate=b["inviter_rate"] if b["inviter"] else 0, nonce=i + 1,
            )
            ids.append(bid)
        assert chain.balance(escrow) == sum(b["amount"] for b in bookings)

        if any(b["action"] == "operator" for b in bookings):
            chain.increase_time(3600)
        for i, (bid, b) in enumerate(zip(ids, bookings, strict=False)):
            amount = b["amount"]
            customer = CUSTOMER2 if b["customer2"] else CUSTOMER
            if b["action"] in ("complete", "operator"):
                key = customer.private_key if b["action"] == "complete" else OPERATOR.private_key
                fn = "completeService" if b["action"] == "complete" else "completeServiceByOperator"
                receipt = chain.escrow_send(fn, [bid], key)
                [(name, ev)] = chain.escrow_events(receipt)
                assert name == "ServiceCompleted"
                parts = [ev["providerAmount"], ev["platformFee"], ev["inviterFee"]]
                assert all(p >= 0 for p in parts) and sum(parts) == amount
                assert ev["platformFee"] == amount * b["platform_rate"] // 10_000
                assert ev["inviterFee"] == (amount * b["inviter_rate"] // 10_000 if b["inviter"] else 0)
                assert ev["providerAmount"] >= amount - amount * 3000 // 10_000
            elif b["action"] == "cancel":
                split = _cancel_split(amount, b["weights"], b["inviter"])
                auth = chain.cancel_auth(bid, customer_amount=split[0], provider_amount=split[1],
                                         platform_amount=split[2], inviter_amount=split[3], nonce=100 + i)
                receipt = chain.cancel(auth, customer.private_key)
                [(name, ev)] = chain.escrow_events(receipt)
                parts = [ev["customerAmount"], ev["providerAmount"], ev["platformAmount"], ev["inviterAmount"]]
                assert name == "BookingCancelled" and list(split) == parts and sum(parts) == amount
            elif b["action"] == "emergency":
                receipt = chain.escrow_send("emergencyCancelBooking", [bid, "prop"], OPERATOR.private_key)
                [(name, ev)] = chain.escrow_events(receipt)
                assert (ev["customerAmount"], ev["providerAmount"], ev["platformAmount"],
                        ev["inviterAmount"]) == (amount, 0, 0, 0)

        views = chain.bookings(ids)
        still_paid = sum(v["amount"] for v in views if v["status"] == 1)
        assert still_paid == sum(b["amount"] for b in bookings if b["action"] == "keep")
        assert chain.balance(escrow) == still_paid
    finally:
        chain.revert(snap)
