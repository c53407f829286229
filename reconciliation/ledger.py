"""The ledger check: the money and the operator's nonces as the database has them, against the
chain, all at ONE pinned block. Run by beat (reconciliation.tasks.check_ledger) and
`manage.py check_ledger`; each run writes a LedgerReport and never writes anything else.

The pinned block is the confirmed block (head − CHAIN_CONFIRMATIONS, as reconciliation reads)
or the scanner's cursor if that is lower: the database cannot know of a block the scanner has
not reached, and a change on chain after the pin never counts.

What is compared, and which source is trusted:
- escrow balance: USDC balanceOf(escrow) at the pin against the sum of `amount` over the
  bookings getBookings shows PAID at the pin. Both figures are the chain's own (one eth_call
  each, batched); the database only supplies which ids to ask about (every booking, stored
  event and orphan). A payment we never heard of shows as a surplus, a payout the contract
  made without an event as a shortfall.
- booking status: each booking's status implies a contract status (IMPLIED_CHAIN_STATUS, the
  comparison reconciliation makes); one that differs at the pin is read again at the head, as
  reconciliation does, and only one that still differs there counts (the database may have
  moved past the pin). The last reconciliation run's counts are embedded in the figures.
- platform fees, inviter payouts, provider earnings: against the contract's own events as
  chain_events stored them (decoded ServiceCompleted / BookingCancelled splits). Trusted
  because they are the logs of the canonical chain up to the pin: stored with their block
  hash, marked REMOVED when a reorg takes their block, and the status check above ties each
  booking's stored outcome to getBooking at the pin. USDC Transfer logs are not stored, and
  fetching the whole history from the node every few minutes would cost more RPC than the
  scanner. Events after the pin count only once processed (the database applied them), so a
  fold in progress never passes for a difference.
- operator nonces: per sending account, eth_getTransactionCount at the pin, at the head and
  pending (one batch) against our MINED/REVERTED rows mined at or below the pin (a nonce the
  chain has not used at the pin is a transaction whose block left the chain), the nonce gap
  the settle job last found (reconcile_operator_nonces, not computed again here), and sends
  still SUBMITTED after TX_STUCK_ALERT_SECONDS.

The database side is read in ONE SQL statement (one snapshot, even under READ COMMITTED):
bookings, fee rows, stored events and earnings never come from different moments. Money is
compared as exact integers (USDC base units) and stored as decimal strings.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from eth_abi import encode

from chain_events.decoding import BOOKING_CANCELLED, BOOKING_CREATED_AND_PAID, SERVICE_COMPLETED
from chain_events.models import ChainEvent, EventStatus, Orphan, SyncCursor
from chain_events.rpc import RpcClient, RpcError, get_rpc_client, get_transaction_counts
from common.eth import ZERO_ADDRESS
from escrow.chain_effects import IMPLIED_CHAIN_STATUS
from escrow.chain_state import ChainStatus
from escrow.models import Booking, BookingStatus, PlatformFee, ProviderEarnings

from .chain_reads import confirmed_block, read_chain_bookings
from .models import LedgerReport, OperatorNonce, SentTransaction, TxStatus
from .selectors import last_finished_report

log = logging.getLogger(__name__)

ESCROW_BALANCE = "escrow_balance"
BOOKING_STATUS = "booking_status"
PLATFORM_FEE = "platform_fee"
INVITER_PAYOUT = "inviter_payout"
PROVIDER_EARNINGS = "provider_earnings"
OPERATOR_NONCE = "operator_nonce"
OPERATOR_NONCE_GAP = "operator_nonce_gap"
OPERATOR_SEND_STUCK = "operator_send_stuck"
MISMATCH_KINDS = (ESCROW_BALANCE, BOOKING_STATUS, PLATFORM_FEE, INVITER_PAYOUT, PROVIDER_EARNINGS,
                  OPERATOR_NONCE, OPERATOR_NONCE_GAP, OPERATOR_SEND_STUCK)

_BALANCE_OF_SELECTOR = bytes.fromhex("70a08231")  # balanceOf(address)
_NEVER_ON_CHAIN = (BookingStatus.EXPIRED, BookingStatus.FAILED)  # an expired authorization cannot be paid


def pinned_block(client: RpcClient) -> int:
    """The block every figure of a check is read at: the confirmed block, or the scanner's
    cursor when it is behind that."""
    block = confirmed_block(client)
    cursor = SyncCursor.objects.filter(
        chain_id=settings.CHAIN_ID, contract_address=settings.ESCROW_CONTRACT_ADDRESS.lower()
    ).first()
    return block if cursor is None else max(min(block, cursor.last_block), 0)


def check_ledger(*, trigger: str = "beat", now=None) -> LedgerReport:
    """One check at one pinned block; the stored report (ok, mismatches, figures). An RPC
    failure leaves a report with `error` set and ok False, never an exception."""
    now = now or timezone.now()
    client = get_rpc_client()
    round_trips_before = client.round_trips
    report = LedgerReport.objects.create(trigger=trigger)
    mismatches: list[dict] = []
    figures: dict = {}
    try:
        block = pinned_block(client)
        report.chain_block = block
        database = _read_database(block)
        mismatches += _check_bookings(client, database, block, figures)
        mismatches += _check_payouts(database, figures)
        mismatches += _check_operator_nonces(client, block, now, figures)
        reconciliation = last_finished_report()
        if reconciliation is not None:
            figures["last_reconciliation"] = {
                "report": reconciliation.pk, "status": reconciliation.status, "chain_block": reconciliation.chain_block,
                "checked": reconciliation.checked, "in_agreement": reconciliation.in_agreement,
                "repaired": reconciliation.repaired, "flagged": reconciliation.flagged, "errors": reconciliation.errors,
            }
        report.ok = not mismatches
    except RpcError as exc:
        report.error = f"RPC unavailable: {exc}"[:2000]
    except Exception as exc:  # a bug must still leave a finished report behind
        log.exception("ledger check %s failed", report.pk)
        report.error = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        report.mismatches = mismatches
        report.mismatch_count = len(mismatches)
        report.figures = figures
        report.rpc_round_trips = client.round_trips - round_trips_before
        report.finished_at = timezone.now()
        report.save()
    if report.ok:
        log.info("%s", report)
    else:
        log.warning("%s: %s", report, json.dumps(mismatches[:20]))
    return report


def last_ledger_report() -> LedgerReport | None:
    """The newest finished check (the console index and /metrics show it)."""
    return LedgerReport.objects.filter(finished_at__isnull=False).order_by("-finished_at").first()


# -- the database side, one snapshot --------------------------------------------------------------
class _Database:
    def __init__(self, answer: dict):
        # [id, chain id, status, inviter (lower), platform, inviter part, provider part] (fee parts None: no row)
        self.bookings = answer["bookings"]
        # [chain id, event name, block, args] in chain order
        self.events = answer["events"]
        self.earnings = {row[0]: (int(row[1]), int(row[2])) for row in answer["earnings"]}
        self.orphan_ids = set(answer["orphans"])


def _read_database(block: int) -> _Database:
    """Bookings with their fee rows, the stored events that count at `block` (its own and older
    ones not removed by a reorg, later ones once processed), provider earnings and orphan ids,
    in one statement: one snapshot."""
    sql = f"""
        WITH ev AS (
            SELECT chain_booking_id, event_name, block_number, log_index, args
            FROM {ChainEvent._meta.db_table}
            WHERE chain_id = %(chain)s AND contract_address = %(contract)s
              AND ((block_number <= %(block)s AND status <> %(removed)s) OR status = %(processed)s)
        )
        SELECT json_build_object(
            'bookings', (
                SELECT coalesce(json_agg(json_build_array(
                    b.id, b.chain_booking_id, b.status, lower(b.inviter_address),
                    f.platform_amount::text, f.inviter_amount::text, f.provider_amount::text) ORDER BY b.id), '[]')
                FROM {Booking._meta.db_table} b LEFT JOIN {PlatformFee._meta.db_table} f ON f.booking_id = b.id
                WHERE b.status <> ALL(%(never)s)
                   OR EXISTS (SELECT 1 FROM ev WHERE ev.chain_booking_id = b.chain_booking_id)),
            'events', (
                SELECT coalesce(json_agg(json_build_array(chain_booking_id, event_name, block_number, args)
                                         ORDER BY block_number, log_index), '[]')
                FROM ev),
            'earnings', (
                SELECT coalesce(json_agg(json_build_array(
                    lower(provider_address), total_earned::text, services_completed)), '[]')
                FROM {ProviderEarnings._meta.db_table}),
            'orphans', (
                SELECT coalesce(json_agg(DISTINCT chain_booking_id), '[]')
                FROM {Orphan._meta.db_table} WHERE chain_id = %(chain)s AND lower(contract_address) = %(contract)s)
        )
    """
    params = {"chain": settings.CHAIN_ID, "contract": settings.ESCROW_CONTRACT_ADDRESS.lower(), "block": block,
              "removed": EventStatus.REMOVED, "processed": EventStatus.PROCESSED, "never": list(_NEVER_ON_CHAIN)}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        (answer,) = cursor.fetchone()
    return _Database(json.loads(answer) if isinstance(answer, str) else answer)


# -- escrow balance and booking statuses ----------------------------------------------------------
def _balance_of_call(holder: str, block: int) -> tuple[str, list]:
    data = _BALANCE_OF_SELECTOR + encode(["address"], [holder])
    return "eth_call", [{"to": settings.USDC_CONTRACT_ADDRESS, "data": "0x" + data.hex()}, hex(block)]


def _check_bookings(client: RpcClient, database: _Database, block: int, figures: dict) -> list[dict]:
    ids = sorted({row[1] for row in database.bookings} | {e[0] for e in database.events} | database.orphan_ids)
    chain = read_chain_bookings(ids, block=block, client=client) if ids else {}
    balance = int(client.call(*_balance_of_call(settings.ESCROW_CONTRACT_ADDRESS, block)), 16)
    held = sum(view.amount for view in chain.values() if view.status == ChainStatus.PAID)
    figures.update({"escrow_balance": str(balance), "held_by_paid_bookings": str(held), "bookings_read": len(ids),
                    "bookings_paid": sum(1 for v in chain.values() if v.status == ChainStatus.PAID)})
    out = []
    if balance != held:
        out.append({
            "kind": ESCROW_BALANCE, "account": settings.ESCROW_CONTRACT_ADDRESS,
            "database": str(held), "chain": str(balance),
            "detail": f"the escrow holds {balance} base units at block {block}; its PAID bookings add up to {held} "
                      f"({'surplus' if balance > held else 'shortfall'} {abs(balance - held)})",
        })
    differing = [row for row in database.bookings if IMPLIED_CHAIN_STATUS[row[2]] != chain[row[1]].status]
    # As reconciliation does: the database may be past the pin (scanner or fast path near the
    # head); only what still differs from the chain's latest state is a difference.
    latest = read_chain_bookings([row[1] for row in differing], block="latest", client=client) if differing else {}
    in_flight = 0
    for pk, chain_booking_id, status, *_ in differing:
        if IMPLIED_CHAIN_STATUS[status] == latest[chain_booking_id].status:
            in_flight += 1
            continue
        out.append({
            "kind": BOOKING_STATUS, "booking": pk, "chain_booking_id": chain_booking_id,
            "database": status, "chain": chain[chain_booking_id].status,
            "detail": f"database {status} (contract {IMPLIED_CHAIN_STATUS[status]}), getBooking at block {block}: "
                      f"{chain[chain_booking_id].status}, at the head: {latest[chain_booking_id].status}",
        })
    figures["bookings_moved_past_the_pin"] = in_flight
    return out


# -- fees, inviter payouts, provider earnings ------------------------------------------------------
def _final_split(event_name: str, args: dict) -> tuple[int, int, int]:
    """(platform, inviter, provider) parts of a completion or cancellation event."""
    if event_name == SERVICE_COMPLETED:
        return int(args["platformFee"]), int(args["inviterFee"]), int(args["providerAmount"])
    return int(args["platformAmount"]), int(args["inviterAmount"]), int(args["providerAmount"])


def _check_payouts(database: _Database, figures: dict) -> list[dict]:
    known = {row[1]: row for row in database.bookings}
    inviter_of: dict[str, str] = {}
    final: dict[str, tuple[str, dict]] = {}
    for chain_booking_id, name, _block, args in database.events:
        if chain_booking_id not in known:
            continue  # an orphan's events: no fee row or earnings here (the console's orphans)
        args = json.loads(args) if isinstance(args, str) else args
        if name == BOOKING_CREATED_AND_PAID:
            inviter_of.setdefault(chain_booking_id, args["inviter"].lower())
        elif name in (SERVICE_COMPLETED, BOOKING_CANCELLED):
            final.setdefault(chain_booking_id, (name, args))

    out = []
    inviter_events: dict[str, int] = defaultdict(int)
    inviter_database: dict[str, int] = defaultdict(int)
    earnings_events: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for pk, chain_booking_id, _status, inviter, *parts in database.bookings:
        recorded = None if parts[0] is None else tuple(int(p) for p in parts)
        expected = None
        if chain_booking_id in final:
            name, args = final[chain_booking_id]
            split = _final_split(name, args)
            # A fee row exists for a completion, and for a cancellation that paid a fee (escrow.chain_effects).
            expected = split if name == SERVICE_COMPLETED or split[0] + split[1] > 0 else None
            inviter_events[inviter_of.get(chain_booking_id, ZERO_ADDRESS)] += split[1]
            if name == SERVICE_COMPLETED:
                earned = earnings_events[args["provider"].lower()]
                earned[0] += split[2]
                earned[1] += 1
        if recorded is not None:
            inviter_database[inviter or ZERO_ADDRESS] += recorded[1]
        if recorded != expected:
            out.append({
                "kind": PLATFORM_FEE, "booking": pk, "chain_booking_id": chain_booking_id,
                "database": _parts(recorded), "chain": _parts(expected),
                "detail": "fee row (platform, inviter, provider) against the booking's "
                          f"{final[chain_booking_id][0] if chain_booking_id in final else 'missing final'} event",
            })
    for inviter in sorted((inviter_events.keys() | inviter_database.keys()) - {ZERO_ADDRESS, ""}):
        if inviter_events[inviter] != inviter_database[inviter]:
            out.append({"kind": INVITER_PAYOUT, "account": inviter, "database": str(inviter_database[inviter]),
                        "chain": str(inviter_events[inviter]),
                        "detail": "the inviter parts of its bookings' fee rows against the contract's events"})
    for provider in sorted(earnings_events.keys() | database.earnings.keys()):
        total, services = database.earnings.get(provider, (0, 0))
        chain_total, chain_services = earnings_events.get(provider, (0, 0))
        if (total, services) != (chain_total, chain_services):
            out.append({"kind": PROVIDER_EARNINGS, "account": provider,
                        "database": f"{total} in {services} services",
                        "chain": f"{chain_total} in {chain_services} services",
                        "detail": "ProviderEarnings against the ServiceCompleted events of its bookings"})
    figures.update({
        "fees_platform": str(sum(_final_split(*v)[0] for v in final.values())),
        "fees_inviter": str(sum(inviter_events.values())),
        "provider_earnings": str(sum(v[0] for v in earnings_events.values())),
        "bookings_finished": len(final), "providers": len(earnings_events.keys() | database.earnings.keys()),
    })
    return out


def _parts(parts: tuple[int, int, int] | None) -> str:
    return "no fee row" if parts is None else "platform {} / inviter {} / provider {}".format(*parts)


# -- operator nonces -------------------------------------------------------------------------------
def _check_operator_nonces(client: RpcClient, block: int, now, figures: dict) -> list[dict]:
    chain_id = settings.CHAIN_ID
    rows = {row.address: row for row in OperatorNonce.objects.filter(chain_id=chain_id)}
    sent = SentTransaction.objects.filter(chain_id=chain_id)
    senders = sent.exclude(nonce=None).order_by().values_list("from_address", flat=True).distinct()
    accounts = sorted(rows.keys() | set(senders))
    if not accounts:
        figures["operator_accounts"] = {}
        return []
    tags = (hex(block), "latest", "pending")
    counts = get_transaction_counts(client, accounts, tags)
    stuck_before = now - timedelta(seconds=settings.TX_STUCK_ALERT_SECONDS)
    out, accounts_figures = [], {}
    for account in accounts:
        at_block, latest, pending = (counts[(account, tag)] for tag in tags)
        mine = sent.filter(from_address=account)
        on_chain = mine.filter(status__in=[TxStatus.MINED, TxStatus.REVERTED], block_number__lte=block)
        highest = on_chain.order_by("-nonce").values_list("nonce", flat=True).first()
        for tx in on_chain.filter(nonce__gte=at_block).order_by("nonce"):
            out.append({
                "kind": OPERATOR_NONCE, "account": account, "transaction": tx.pk, "tx_hash": tx.tx_hash,
                "database": f"nonce {tx.nonce} {tx.status} in block {tx.block_number}",
                "chain": f"{at_block} nonces used at block {block}",
                "detail": f"{tx.purpose} transaction: its block left the chain (the settle job re-sends it)",
            })
        row = rows.get(account)
        if row is not None and row.nonce_gap:
            out.append({
                "kind": OPERATOR_NONCE_GAP, "account": account, "database": f"next nonce {row.next_nonce}",
                "chain": f"pending count {pending}",
                "detail": f"{row.nonce_gap} nonce(s) unused below our transactions at the settle job's last check "
                          f"({row.checked_at})",
            })
        for tx in mine.filter(status=TxStatus.SUBMITTED, submitted_at__lt=stuck_before).order_by("nonce"):
            out.append({
                "kind": OPERATOR_SEND_STUCK, "account": account, "transaction": tx.pk, "tx_hash": tx.tx_hash,
                "database": f"nonce {tx.nonce} SUBMITTED at {tx.submitted_at:%Y-%m-%d %H:%M:%S}",
                "chain": f"latest count {latest}, pending count {pending}",
                "detail": f"{tx.purpose} transaction not mined after {settings.TX_STUCK_ALERT_SECONDS:g} s",
            })
        accounts_figures[account] = {
            "nonces_used_at_block": at_block, "latest": latest, "pending": pending,
            "highest_mined_nonce_at_block": highest, "next_nonce": row.next_nonce if row else None,
            "nonce_gap": row.nonce_gap if row else None,
        }
    figures["operator_accounts"] = accounts_figures
    return out
