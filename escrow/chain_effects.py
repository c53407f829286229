"""Booking-side effects of chain events: make bookings agree with their derived chain state.

chain_events folds a booking's events into a chain state (NONE / PAID / COMPLETED /
CANCELLED plus the events that made it, see escrow.chain_state). This module turns
"booking as the database has it" + "state the chain says" into the database changes, and
applies them for many bookings at once with a handful of set-based statements:

- status: moves along the chain path with one BookingStatusChange per step (source chain,
  the event's tx hash), e.g. PENDING_PAYMENT → PAID → COMPLETED when both events arrive in
  one range. A state that went backwards (a reorg removed events) moves the booking back in
  one audited step (PENDING_PAYMENT when the payment is gone). Like `escrow.state.transition`
  with source CHAIN, chain states always apply; the rows written are the same.
- payment/completion/cancellation tx hashes, chain_confirmed_at, and chain_data, which holds
  the derived chain state last applied (`{"source": "chain_events", "status", "payment",
  "completion", "cancellation", "event", "anomalies"}`, uint256 as strings). chain_data is
  owned by the chain sync: the difference between the state it holds and the new state is
  what gets applied, which makes applying idempotent and reorg reversal exact.
- a mismatch between the payment event and the booking (parties, amount, rates), or an event
  sequence the contract cannot produce, raises an AttentionItem (each reason once per booking,
  see escrow.attention) and sets needs_attention; the chain state still applies. An open item
  of those kinds that the current fold no longer raises is withdrawn (e.g. a cancellation the
  fast path folded "without a known payment" before the payment's log, mined in the same block,
  was stored), and needs_attention follows the items left open.
- a booking that reached COMPLETED/CANCELLED before its payment's log was stored gets the
  PENDING_PAYMENT → PAID step its trail skipped, once the payment is stored (status unchanged).
- PlatformFee: one row per booking, present while the chain state has a completion (platform,
  inviter and provider parts of ServiceCompleted) or a cancellation whose platform + inviter
  parts are > 0 (the split of BookingCancelled); removed/changed when a reorg changes that.
  The cancellation split is always in chain_data["cancellation"].
- ProviderEarnings: + providerAmount and +1 service per completion in the chain state,
  reversed exactly when a reorg removes the completion. Cancellation payouts to a provider
  are not "earnings for a completed service": they are in chain_data and the fee row only.
- SignatureNonce: when a payment (cancellation) lands, the booking's latest unconsumed
  payment (cancellation) nonce is marked consumed with the tx hash; the event does not carry
  the nonce, and a booking's newest authorization is the one a wallet submits. A cancellation
  by someone other than the customer or provider (operator emergency cancel) used no nonce.
  When a reorg removes the event, the nonce it consumed is released again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from common.db import json_value, server_binding_cursor
from common.eth import ZERO_ADDRESS, checksum, same_address

from . import attention
from .chain_state import CHAIN_DATA_SOURCE, ChainStatus
from .models import (
    CHAIN_ATTENTION_KINDS,
    AttentionKind,
    Booking,
    BookingStatus,
    BookingStatusChange,
    PlatformFee,
    ProviderEarnings,
    SignatureKind,
    SignatureNonce,
    StatusSource,
)

S = BookingStatus
C = ChainStatus

# What a booking status says about the contract's storage.
IMPLIED_CHAIN_STATUS = {
    S.PENDING_PAYMENT: C.NONE,
    S.EXPIRED: C.NONE,
    S.FAILED: C.NONE,
    S.PAID: C.PAID,
    S.PENDING_COMPLETION: C.PAID,
    S.PENDING_CANCELLATION: C.PAID,
    S.COMPLETED: C.COMPLETED,
    S.CANCELLED: C.CANCELLED,
}
# The booking status a chain status lands on when the booking must move.
TARGET_STATUS = {
    C.NONE: S.PENDING_PAYMENT,
    C.PAID: S.PAID,
    C.COMPLETED: S.COMPLETED,
    C.CANCELLED: S.CANCELLED,
}
_FORWARD = {(C.NONE, C.PAID), (C.NONE, C.COMPLETED), (C.NONE, C.CANCELLED),
            (C.PAID, C.COMPLETED), (C.PAID, C.CANCELLED)}

_BOOKING = Booking._meta.db_table
_FEE = PlatformFee._meta.db_table
_CHANGE = BookingStatusChange._meta.db_table
_EARNINGS = ProviderEarnings._meta.db_table
_NONCE = SignatureNonce._meta.db_table
# One compact encoder for every chain_data row: json.dumps(..., separators=...) builds a new
# encoder per call, a third of the encoding time over a catch-up range.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(slots=True)
class FeeRow:
    platform_amount: int
    inviter_amount: int
    provider_amount: int
    tx_hash: str
    id: int | None = None

    def same(self, other: FeeRow | None) -> bool:
        return other is not None and (
            self.platform_amount, self.inviter_amount, self.provider_amount, self.tx_hash
        ) == (other.platform_amount, other.inviter_amount, other.provider_amount, other.tx_hash)


@dataclass(slots=True)
class BookingSnapshot:
    id: int
    chain_booking_id: str
    status: str
    customer_address: str
    provider_address: str
    inviter_address: str
    amount: int
    platform_fee_rate: int
    inviter_fee_rate: int
    payment_tx_hash: str
    completion_tx_hash: str
    cancellation_tx_hash: str
    chain_confirmed_at: object
    chain_data: dict
    needs_attention: bool
    fee: FeeRow | None


def lock_bookings(chain_booking_ids: list[str]) -> dict[str, BookingSnapshot]:
    """Lock (FOR UPDATE, in id order: no deadlocks between writers) and read these bookings.

    Their fee rows are read by a second statement, once the locks are held. Joined into the
    locking SELECT, a fee row another writer committed while this one waited for the lock
    would be missed: PostgreSQL re-reads the locked row after the wait, not the joined ones.
    """
    if not chain_booking_ids:
        return {}
    lock_sql = f"""
        SELECT b.id, b.chain_booking_id, b.status, b.customer_address, b.provider_address, b.inviter_address,
               b.amount, b.platform_fee_rate, b.inviter_fee_rate, b.payment_tx_hash, b.completion_tx_hash,
               b.cancellation_tx_hash, b.chain_confirmed_at, b.chain_data, b.needs_attention
        FROM {_BOOKING} b
        WHERE b.chain_booking_id = ANY(%b::text[])
        ORDER BY b.id
        FOR UPDATE
    """
    fee_sql = f"""
        SELECT f.booking_id, f.id, f.platform_amount, f.inviter_amount, f.provider_amount, f.tx_hash
        FROM {_FEE} f WHERE f.booking_id = ANY(%b::bigint[])
    """
    out = {}
    with server_binding_cursor() as cursor:
        cursor.execute(lock_sql, [list(chain_booking_ids)])
        rows = cursor.fetchall()
        fees = {}
        if rows:
            cursor.execute(fee_sql, [[row[0] for row in rows]])
            fees = {
                row[0]: FeeRow(int(row[2]), int(row[3]), int(row[4]), row[5], id=row[1]) for row in cursor.fetchall()
            }
        for row in rows:
            out[row[1]] = BookingSnapshot(
                row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), row[7], row[8], row[9], row[10],
                row[11], row[12], json_value(row[13]), row[14], fees.get(row[0]),
            )
    return out


@dataclass(slots=True)
class BookingPlan:
    snapshot: BookingSnapshot
    status: str
    payment_tx_hash: str
    completion_tx_hash: str
    cancellation_tx_hash: str
    chain_confirmed_at: object
    chain_data: dict
    needs_attention: bool
    # (kind, reason) the chain state raises; apply_plans keeps those never raised before.
    attention: list[tuple[str, str]] = field(default_factory=list)
    new_attention: list[tuple[str, str]] = field(default_factory=list)
    # (item id, why) of open chain-sync items the chain state no longer raises.
    withdraw: list[tuple[int, str]] = field(default_factory=list)
    # The newest block among the events folded (None: no events).
    events_block: int | None = None
    # (from, to, tx_hash, note, moves_booking): see BookingStatusChange.moves_booking.
    steps: list[tuple[str, str, str, str, bool]] = field(default_factory=list)
    fee: FeeRow | None = None
    fee_changed: bool = False
    earnings: list[tuple[str, int, int]] = field(default_factory=list)  # (provider, amount delta, count delta)
    consume: list[tuple[str, str]] = field(default_factory=list)  # (kind, tx_hash)
    release: list[tuple[str, str]] = field(default_factory=list)  # (kind, tx_hash)

    @property
    def booking_changed(self) -> bool:
        s = self.snapshot
        return (
            self.steps
            or (self.payment_tx_hash, self.completion_tx_hash, self.cancellation_tx_hash)
            != (s.payment_tx_hash, s.completion_tx_hash, s.cancellation_tx_hash)
            or self.chain_confirmed_at != s.chain_confirmed_at
            or self.chain_data != s.chain_data
            or self.needs_attention != s.needs_attention
        )


def payment_mismatches(snapshot: BookingSnapshot, payment) -> list[str]:
    """How the chain's payment differs from what the booking says ("" / zero inviter are equal)."""
    args = payment.args
    if (
        args["amount"] == snapshot.amount
        and args["platformFeeRate"] == snapshot.platform_fee_rate
        and args["inviterFeeRate"] == snapshot.inviter_fee_rate
        and args["customer"].lower() == snapshot.customer_address.lower()
        and args["provider"].lower() == snapshot.provider_address.lower()
        and same_address(args["inviter"], snapshot.inviter_address)
    ):
        return []  # the usual case, without building the comparison tables below
    diffs = []
    for label, chain_value, db_value in (
        ("customer", args["customer"], snapshot.customer_address),
        ("provider", args["provider"], snapshot.provider_address),
        ("inviter", args["inviter"], snapshot.inviter_address),
    ):
        if not same_address(chain_value, db_value):
            diffs.append(f"{label} chain={checksum(chain_value)} db={db_value or ZERO_ADDRESS}")
    for label, chain_value, db_value in (
        ("amount", args["amount"], snapshot.amount),
        ("platform_fee_rate", args["platformFeeRate"], snapshot.platform_fee_rate),
        ("inviter_fee_rate", args["inviterFeeRate"], snapshot.inviter_fee_rate),
    ):
        if int(chain_value) != int(db_value):
            diffs.append(f"{label} chain={chain_value} db={db_value}")
    return diffs


def _event_note(event) -> str:
    return f"{event.event_name} in block {event.block_number} (log {event.log_index})"


def _fee_for(state) -> FeeRow | None:
    if state.completion is not None:
        a = state.completion.args
        return FeeRow(a["platformFee"], a["inviterFee"], a["providerAmount"], state.completion.tx_hash)
    if state.cancellation is not None:
        a = state.cancellation.args
        if a["platformAmount"] + a["inviterAmount"] > 0:
            return FeeRow(a["platformAmount"], a["inviterAmount"], a["providerAmount"], state.cancellation.tx_hash)
    return None


def _completion_key(facts: dict | None):
    if not facts:
        return None
    return (facts["tx_hash"], facts["provider"].lower(), int(facts["providerAmount"]))


def plan_booking_sync(snapshot: BookingSnapshot, state, *, now) -> BookingPlan:
    """The changes that make `snapshot` agree with chain `state` (pure: reads nothing else)."""
    old = snapshot.chain_data if snapshot.chain_data.get("source") == CHAIN_DATA_SOURCE else {}
    new = state.to_json()
    implied = IMPLIED_CHAIN_STATUS[snapshot.status]
    target = state.status
    plan = BookingPlan(
        snapshot=snapshot,
        status=snapshot.status,
        payment_tx_hash=snapshot.payment_tx_hash,
        completion_tx_hash=snapshot.completion_tx_hash,
        cancellation_tx_hash=snapshot.cancellation_tx_hash,
        chain_confirmed_at=snapshot.chain_confirmed_at,
        chain_data=new,
        needs_attention=snapshot.needs_attention,
        fee=snapshot.fee,
        events_block=state.last_event.block_number if state.last_event is not None else None,
    )

    # -- status: forward along the chain path, or back in one step after a reorg ----------
    if implied != target:
        if (implied, target) in _FORWARD:
            current = snapshot.status
            if implied == C.NONE and state.payment is not None:
                plan.steps.append((current, S.PAID, state.payment.tx_hash, _event_note(state.payment), True))
                current = S.PAID
            final = state.completion if target == C.COMPLETED else state.cancellation
            if final is not None:
                plan.steps.append((current, TARGET_STATUS[target], final.tx_hash, _event_note(final), True))
        else:
            gone = [old.get(k) for k in ("cancellation", "completion", "payment") if old.get(k) and not new.get(k)]
            tx_hash = gone[0]["tx_hash"] if gone else ""
            # Events removed: a reorg. None: the status was set without an event (by hand, say).
            note = (f"chain reorg: chain state is now {target}; removed: " + ", ".join(g["tx_hash"] for g in gone)
                    if gone else f"chain state is now {target}; no stored event shows {implied}")
            plan.steps.append((snapshot.status, TARGET_STATUS[target], tx_hash, note, True))
        if plan.steps:
            plan.status = plan.steps[-1][1]
    elif target in (C.COMPLETED, C.CANCELLED) and state.payment is not None and old and not old.get("payment"):
        # The chain sync took the booking to its end without a payment (the fast path folded the
        # cancellation's receipt alone; the payment, mined in the same block, was stored after):
        # the trail gets the step it skipped. The status stays: a history line, not a move.
        final = state.completion if target == C.COMPLETED else state.cancellation
        after = f", stored after {final.event_name} in tx {final.tx_hash}" if final is not None else ""
        plan.steps.append((S.PENDING_PAYMENT, S.PAID, state.payment.tx_hash,
                           f"{_event_note(state.payment)}{after}: recorded late", False))

    # -- tx hashes and confirmation time mirror the chain state ---------------------------
    regressed = implied != target and (implied, target) not in _FORWARD
    for attr, event, chain_status in (
        ("payment_tx_hash", state.payment, None),
        ("completion_tx_hash", state.completion, C.COMPLETED),
        ("cancellation_tx_hash", state.cancellation, C.CANCELLED),
    ):
        if event is not None:
            setattr(plan, attr, event.tx_hash)
        elif regressed and (chain_status is None and target == C.NONE or implied == chain_status):
            setattr(plan, attr, "")
    if state.payment is not None and plan.chain_confirmed_at is None:
        plan.chain_confirmed_at = now
    elif state.payment is None and regressed and target == C.NONE:
        plan.chain_confirmed_at = None

    # -- attention: the chain disagrees with the booking (still applied: chain is truth) ---
    if state.payment is not None:
        diffs = payment_mismatches(snapshot, state.payment)
        if diffs:
            plan.attention.append((AttentionKind.CHAIN_MISMATCH, f"chain payment {state.payment.tx_hash} differs "
                                   "from the booking: " + "; ".join(diffs)))
    plan.attention += [(AttentionKind.CHAIN_ANOMALY, f"chain: {a}") for a in state.anomalies]

    # -- platform fee row -----------------------------------------------------------------
    desired = _fee_for(state)
    if desired is None:
        plan.fee_changed = snapshot.fee is not None
        plan.fee = None
    elif not desired.same(snapshot.fee):
        desired.id = snapshot.fee.id if snapshot.fee else None
        plan.fee, plan.fee_changed = desired, True

    # -- provider earnings: the difference between the old and the new completion ---------
    old_c, new_c = old.get("completion"), new.get("completion")
    if _completion_key(old_c) != _completion_key(new_c):
        if old_c:
            plan.earnings.append((checksum(old_c["provider"]), -int(old_c["providerAmount"]), -1))
        if new_c:
            plan.earnings.append((checksum(new_c["provider"]), int(new_c["providerAmount"]), 1))

    # -- signature nonces -------------------------------------------------------------------
    for kind, key in ((SignatureKind.PAYMENT, "payment"), (SignatureKind.CANCELLATION, "cancellation")):
        old_tx = (old.get(key) or {}).get("tx_hash")
        new_facts = new.get(key)
        new_tx = new_facts["tx_hash"] if new_facts else None
        if old_tx == new_tx:
            continue
        if old_tx:
            plan.release.append((kind, old_tx))
        if new_tx and (
            kind == SignatureKind.PAYMENT
            or same_address(new_facts["cancelledBy"], snapshot.customer_address)
            or same_address(new_facts["cancelledBy"], snapshot.provider_address)
        ):
            plan.consume.append((kind, new_tx))
    return plan


def sync_bookings_to_chain(
    pairs, *, actor: str, now, source: str = StatusSource.CHAIN, before_shared_writes=None
) -> int:
    """Apply the chain state to each (locked snapshot, state) pair; return how many changed.

    `source` is what the BookingStatusChange rows say moved the booking: `chain` for the
    scanner, the fast path and retries, `reconciliation` when reconciliation applies logs.
    `before_shared_writes` is called before rows other bookings' writers may also change
    (provider earnings), after the rows of these bookings alone.
    """
    plans = [plan_booking_sync(snapshot, state, now=now) for snapshot, state in pairs]
    _keep_new_attention([p for p in plans if p.attention])
    _withdraw_stale_attention([p for p in plans if p.snapshot.needs_attention])
    apply_plans(plans, actor=actor, now=now, source=source, before_shared_writes=before_shared_writes)
    return sum(1 for p in plans if p.booking_changed)


def _keep_new_attention(plans: list[BookingPlan]) -> None:
    """Each reason once per booking: a reason raised before (open or acknowledged by staff) is
    not raised again. Rare (a mismatch, an anomaly), so one read for all of them."""
    if not plans:
        return
    raised = attention.raised_chain_reasons(p.snapshot.id for p in plans)
    for plan in plans:
        seen = raised.get(plan.snapshot.id, set())
        plan.new_attention = [(kind, reason) for kind, reason in plan.attention if reason not in seen]
        if plan.new_attention:
            plan.needs_attention = True


def _withdraw_stale_attention(plans: list[BookingPlan]) -> None:
    """Open chain-sync items the booking's current chain state no longer raises are withdrawn,
    and needs_attention becomes "an item is still open". Only bookings that need attention can
    have one, so one read for all of them."""
    if not plans:
        return
    open_items = attention.open_items_of(p.snapshot.id for p in plans)
    for plan in plans:
        items = open_items.get(plan.snapshot.id, [])
        raised = {reason for _, reason in plan.attention}
        why = (f"no longer raised by the chain events at block {plan.events_block}" if plan.events_block is not None
               else "no longer raised: the booking has no chain events left")
        plan.withdraw = [
            (item_id, why) for item_id, kind, reason in items if kind in CHAIN_ATTENTION_KINDS and reason not in raised
        ]
        plan.needs_attention = bool(plan.new_attention) or len(items) > len(plan.withdraw)


def apply_plans(
    plans: list[BookingPlan], *, actor: str, now, source: str = StatusSource.CHAIN, before_shared_writes=None
) -> None:
    """Write the plans with one statement per kind of change (callers hold the booking locks):
    first the rows that belong to these bookings alone, then (after `before_shared_writes`,
    see sync_bookings_to_chain) provider earnings."""
    changed = [p for p in plans if p.booking_changed]
    with server_binding_cursor() as cursor:
        if changed:
            cursor.execute(
                f"""UPDATE {_BOOKING} AS b SET
                        status = u.status,
                        status_changed_at = CASE WHEN u.moved THEN %s ELSE b.status_changed_at END,
                        payment_tx_hash = u.payment_tx_hash, completion_tx_hash = u.completion_tx_hash,
                        cancellation_tx_hash = u.cancellation_tx_hash, chain_confirmed_at = u.chain_confirmed_at,
                        chain_data = u.chain_data::jsonb, needs_attention = u.needs_attention, updated_at = %s
                    FROM unnest(%b::bigint[], %b::text[], %b::bool[], %b::text[], %b::text[], %b::text[],
                                %b::timestamptz[], %b::text[], %b::bool[])
                        AS u(id, status, moved, payment_tx_hash, completion_tx_hash, cancellation_tx_hash,
                             chain_confirmed_at, chain_data, needs_attention)
                    WHERE b.id = u.id""",
                [
                    now, now,
                    [p.snapshot.id for p in changed],
                    [p.status for p in changed],
                    [p.status != p.snapshot.status for p in changed],
                    [p.payment_tx_hash for p in changed],
                    [p.completion_tx_hash for p in changed],
                    [p.cancellation_tx_hash for p in changed],
                    [p.chain_confirmed_at for p in changed],
                    [_compact_json(p.chain_data) for p in changed],
                    [p.needs_attention for p in changed],
                ],
            )
        new_items = [(p.snapshot.id, kind, reason) for p in plans for kind, reason in p.new_attention]
        if new_items:
            attention.insert_items(new_items, now=now)
        withdrawn = [w for p in plans for w in p.withdraw]
        if withdrawn:
            attention.withdraw_items(withdrawn, now=now)
        steps = [(p.snapshot.id, *step) for p in plans for step in p.steps]
        if steps:
            cursor.execute(
                f"""INSERT INTO {_CHANGE}
                        (booking_id, from_status, to_status, source, actor, tx_hash, note, moves_booking, created_at)
                    SELECT u.booking_id, u.from_status, u.to_status, %s, %s, u.tx_hash, u.note, u.moves_booking, %s
                    FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::boolean[])
                        AS u(booking_id, from_status, to_status, tx_hash, note, moves_booking)""",
                [
                    source, actor[:200], now,
                    [s[0] for s in steps], [s[1] for s in steps], [s[2] for s in steps],
                    [s[3] for s in steps], [s[4] for s in steps], [s[5] for s in steps],
                ],
            )
        _write_fees(cursor, [p for p in plans if p.fee_changed], now)
        _write_nonces(cursor, plans, now)
        earnings = [e for p in plans for e in p.earnings]
        if earnings and before_shared_writes is not None:
            before_shared_writes()
        _write_earnings(cursor, earnings, now)


def _write_fees(cursor, plans: list[BookingPlan], now) -> None:
    if not plans:
        return
    drop = [p.snapshot.fee.id for p in plans if p.fee is None and p.snapshot.fee is not None]
    if drop:
        cursor.execute(f"DELETE FROM {_FEE} WHERE id = ANY(%b::bigint[])", [drop])
    update = [p for p in plans if p.fee is not None and p.fee.id is not None]
    if update:
        cursor.execute(
            f"""UPDATE {_FEE} AS f SET platform_amount = u.platform, inviter_amount = u.inviter,
                    provider_amount = u.provider, tx_hash = u.tx_hash
                FROM unnest(%b::bigint[], %b::numeric[], %b::numeric[], %b::numeric[], %b::text[])
                    AS u(id, platform, inviter, provider, tx_hash)
                WHERE f.id = u.id""",
            [
                [p.fee.id for p in update],
                [p.fee.platform_amount for p in update],
                [p.fee.inviter_amount for p in update],
                [p.fee.provider_amount for p in update],
                [p.fee.tx_hash for p in update],
            ],
        )
    create = [p for p in plans if p.fee is not None and p.fee.id is None]
    if create:
        cursor.execute(
            f"""INSERT INTO {_FEE} (booking_id, platform_amount, inviter_amount, provider_amount, tx_hash, created_at)
                SELECT u.booking_id, u.platform, u.inviter, u.provider, u.tx_hash, %s
                FROM unnest(%b::bigint[], %b::numeric[], %b::numeric[], %b::numeric[], %b::text[])
                    AS u(booking_id, platform, inviter, provider, tx_hash)""",
            [now, [p.snapshot.id for p in create], [p.fee.platform_amount for p in create],
             [p.fee.inviter_amount for p in create], [p.fee.provider_amount for p in create],
             [p.fee.tx_hash for p in create]],
        )


def _write_earnings(cursor, deltas: list[tuple[str, int, int]], now) -> None:
    totals: dict[str, list[int]] = {}
    for provider, amount, count in deltas:
        t = totals.setdefault(provider, [0, 0])
        t[0] += amount
        t[1] += count
    totals = {k: v for k, v in totals.items() if v != [0, 0]}
    if not totals:
        return
    # Fixed order: concurrent writers lock the rows alike. Additions are upserts; reversals
    # (a reorg removed a completion) update the existing row: a proposed INSERT row with a
    # negative count would fail the CHECK constraints before ON CONFLICT is considered.
    add = sorted(p for p, (amount, n) in totals.items() if amount >= 0 and n >= 0)
    reverse = sorted(p for p in totals if p not in add)
    if add:
        cursor.execute(
            f"""INSERT INTO {_EARNINGS} AS e (provider_address, total_earned, services_completed, updated_at)
                SELECT u.provider, u.amount, u.n, %s
                FROM unnest(%b::text[], %b::numeric[], %b::int[]) AS u(provider, amount, n)
                ON CONFLICT (provider_address) DO UPDATE SET
                    total_earned = e.total_earned + EXCLUDED.total_earned,
                    services_completed = e.services_completed + EXCLUDED.services_completed,
                    updated_at = EXCLUDED.updated_at""",
            [now, add, [totals[p][0] for p in add], [totals[p][1] for p in add]],
        )
    if reverse:
        cursor.execute(
            f"""UPDATE {_EARNINGS} AS e SET total_earned = e.total_earned + u.amount,
                    services_completed = e.services_completed + u.n, updated_at = %s
                FROM unnest(%b::text[], %b::numeric[], %b::int[]) AS u(provider, amount, n)
                WHERE e.provider_address = u.provider""",
            [now, reverse, [totals[p][0] for p in reverse], [totals[p][1] for p in reverse]],
        )


def _write_nonces(cursor, plans: list[BookingPlan], now) -> None:
    release = [(p.snapshot.id, kind, tx) for p in plans for kind, tx in p.release]
    if release:
        cursor.execute(
            f"""UPDATE {_NONCE} AS n SET consumed_at = NULL, consumed_tx_hash = ''
                FROM unnest(%b::bigint[], %b::text[], %b::text[]) AS u(booking_id, kind, tx_hash)
                WHERE n.booking_id = u.booking_id AND n.kind = u.kind AND n.consumed_tx_hash = u.tx_hash""",
            [[r[0] for r in release], [r[1] for r in release], [r[2] for r in release]],
        )
    consume = [(p.snapshot.id, kind, tx) for p in plans for kind, tx in p.consume]
    if consume:
        # The latest unconsumed nonce of that kind per booking, unless one already carries the tx.
        cursor.execute(
            f"""UPDATE {_NONCE} AS n SET consumed_at = %s, consumed_tx_hash = pick.tx_hash
                FROM (
                    SELECT DISTINCT ON (c.booking_id, c.kind) c.id, u.tx_hash
                    FROM unnest(%b::bigint[], %b::text[], %b::text[]) AS u(booking_id, kind, tx_hash)
                    JOIN {_NONCE} c ON c.booking_id = u.booking_id AND c.kind = u.kind AND c.consumed_at IS NULL
                    WHERE NOT EXISTS (
                        SELECT 1 FROM {_NONCE} d
                        WHERE d.booking_id = u.booking_id AND d.kind = u.kind AND d.consumed_tx_hash = u.tx_hash)
                    ORDER BY c.booking_id, c.kind, c.created_at DESC, c.id DESC
                ) AS pick
                WHERE n.id = pick.id""",
            [now, [c[0] for c in consume], [c[1] for c in consume], [c[2] for c in consume]],
        )
