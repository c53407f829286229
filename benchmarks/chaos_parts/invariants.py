"""What must hold once the faults stopped and the system settled, checked against the chain
(anvil itself, at one pinned block) with the chain's own reads: getBookings, the escrow's USDC
balance, balanceOf of every payee, and the escrow's logs. Each check gives its numbers.

  status        every booking: database status agrees with getBooking (and the amount held)
  escrow        USDC held by the escrow = sum of the bookings the contract holds = the database's
  fees          per booking, the fee row (platform, inviter, provider parts) = the completion's or
                cancellation's event; fee recipient's USDC = the sum of the platform parts
  inviters      the inviter's USDC = the sum of the inviter parts the database recorded
  providers     provider earnings (total, services) = the completions' events, per provider; each
                provider's USDC = its completion and cancellation parts
  events        the database's live events = the chain's logs, one for one (none missing, none
                extra, none applied twice); no event left unsettled
  dead letters, orphans, open attention (flags, items, needs_attention), operator sends stuck
  auto-complete every booking left paid whose time came is COMPLETED (database and chain)
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from eth_abi import decode as abi_decode
from eth_utils import keccak
from web3 import Web3

from contracts.anvil import OPERATOR
from contracts.deploy import escrow_abi, usdc_abi

CHAIN_STATUS = {0: "NONE", 1: "PAID", 2: "COMPLETED", 3: "CANCELLED"}
DB_FOR_CHAIN = {
    "NONE": {"PENDING_PAYMENT", "EXPIRED", "FAILED"},
    "PAID": {"PAID", "PENDING_COMPLETION", "PENDING_CANCELLATION"},
    "COMPLETED": {"COMPLETED"},
    "CANCELLED": {"CANCELLED"},
}
HELD = DB_FOR_CHAIN["PAID"]
EVENT_SIGNATURES = {
    "BookingCreatedAndPaid": "BookingCreatedAndPaid(bytes32,address,address,address,uint256,uint256,uint256)",
    "ServiceCompleted": "ServiceCompleted(bytes32,address,uint256,uint256,uint256)",
    "BookingCancelled": "BookingCancelled(bytes32,address,uint256,uint256,uint256,uint256,string)",
}
TOPICS = {"0x" + keccak(text=signature).hex(): name for name, signature in EVENT_SIGNATURES.items()}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class InvariantChecker:
    def __init__(self, *, anvil_url: str, escrow: str, usdc: str, start_block: int, fee_recipient: str,
                 inviter: str, providers: list[str]):
        self.w3 = Web3(Web3.HTTPProvider(anvil_url, request_kwargs={"timeout": 120}))
        self.escrow = self.w3.eth.contract(address=escrow, abi=escrow_abi())
        self.usdc = self.w3.eth.contract(address=usdc, abi=usdc_abi())
        self.start_block = start_block
        self.fee_recipient = fee_recipient
        self.inviter = inviter
        self.providers = providers
        self._events = {e["name"]: e for e in escrow_abi() if e.get("type") == "event"}

    # -- chain reads at one block ---------------------------------------------------------
    def _logs(self, block: int) -> list[dict]:
        out = []
        for log in self.w3.eth.get_logs({"address": self.escrow.address, "fromBlock": self.start_block,
                                         "toBlock": block}):
            topic0 = "0x" + bytes(log["topics"][0]).hex()
            if topic0 not in TOPICS:
                continue
            name = TOPICS[topic0]
            abi = self._events[name]
            indexed = [i for i in abi["inputs"] if i["indexed"]]
            plain = [i for i in abi["inputs"] if not i["indexed"]]
            values = dict(zip([i["name"] for i in plain], abi_decode([i["type"] for i in plain], bytes(log["data"])),
                              strict=True))
            for item, topic in zip(indexed, log["topics"][1:], strict=True):
                values[item["name"]] = abi_decode([item["type"]], bytes(topic))[0]
            booking_id = values["bookingId"]
            out.append({"name": name, "booking": "0x" + bytes(booking_id).hex(), "args": values,
                        "tx_hash": "0x" + bytes(log["transactionHash"]).hex(), "log_index": log["logIndex"]})
        return out

    def _bookings(self, ids: list[str], block: int) -> dict[str, tuple]:
        views = {}
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            result = self.escrow.functions.getBookings([bytes.fromhex(x[2:]) for x in chunk]).call(
                block_identifier=block)
            views.update(zip(chunk, result, strict=True))
        return views

    def _usdc(self, address: str, block: int) -> int:
        return self.usdc.functions.balanceOf(address).call(block_identifier=block)

    # -- the checks -------------------------------------------------------------------------
    def run(self, *, auto_complete: list[tuple[str, object]], due_before) -> list[Check]:
        from chain_events.models import ChainEvent, EventStatus, Orphan
        from escrow.models import AttentionItem, Booking, PlatformFee, ProviderEarnings
        from reconciliation.models import ReconciliationFlag, SentTransaction, TxStatus

        block = self.w3.eth.block_number
        logs = self._logs(block)
        bookings = list(Booking.objects.values("uuid", "chain_booking_id", "status", "amount", "provider_address"))
        views = self._bookings([b["chain_booking_id"] for b in bookings], block)
        checks: list[Check] = []

        # status and amounts held
        mismatched = []
        for b in bookings:
            view = views[b["chain_booking_id"]]
            chain_status = CHAIN_STATUS[view[7]]
            if b["status"] not in DB_FOR_CHAIN[chain_status] or (chain_status != "NONE" and view[3] != b["amount"]):
                mismatched.append(f"{b['uuid']} db {b['status']} chain {chain_status}")
        by_status = Counter(b["status"] for b in bookings)
        checks.append(Check("status (database vs getBooking)", not mismatched,
                            f"{len(bookings)} bookings, {len(mismatched)} mismatches {mismatched[:5]}; "
                            f"database: {dict(sorted(by_status.items()))}"))

        # escrow balance
        balance = self._usdc(self.escrow.address, block)
        held_chain = sum(v[3] for v in views.values() if v[7] == 1)
        held_db = sum(int(b["amount"]) for b in bookings if b["status"] in HELD)
        checks.append(Check("escrow USDC balance", balance == held_chain == held_db,
                            f"balanceOf {balance} = held on chain {held_chain} = held in database {held_db}"))

        # payouts from the events
        payouts = {}  # booking -> (platform, inviter, provider, provider address, completion?)
        for log in logs:
            a = log["args"]
            if log["name"] == "ServiceCompleted":
                payouts[log["booking"]] = (a["platformFee"], a["inviterFee"], a["providerAmount"],
                                           Web3.to_checksum_address(a["provider"]), True)
            elif log["name"] == "BookingCancelled":
                payouts[log["booking"]] = (a["platformAmount"], a["inviterAmount"], a["providerAmount"], None, False)
        db_fees = {f["booking__chain_booking_id"]: f for f in PlatformFee.objects.values(
            "booking__chain_booking_id", "platform_amount", "inviter_amount", "provider_amount")}
        fee_bad = []
        for booking, (platform, inviter, provider, _, completion) in payouts.items():
            row = db_fees.get(booking)
            expected_row = completion or platform + inviter > 0
            if not expected_row:
                if row is not None:
                    fee_bad.append(f"{booking[:10]} has a fee row but its cancellation paid no fee")
                continue
            got = None
            if row:
                got = (int(row["platform_amount"]), int(row["inviter_amount"]), int(row["provider_amount"]))
            if got != (platform, inviter, provider):
                fee_bad.append(f"{booking[:10]} db {got} chain {(platform, inviter, provider)}")
        fee_bad += [f"{b[:10]} fee row without a payout event" for b in db_fees if b not in payouts]
        platform_sum = sum(p[0] for p in payouts.values())
        ledger_platform = sum(int(f["platform_amount"]) for f in db_fees.values())
        fee_balance = self._usdc(self.fee_recipient, block)
        checks.append(Check("platform fee ledger", not fee_bad and fee_balance == platform_sum == ledger_platform,
                            f"{len(db_fees)} fee rows, {len(fee_bad)} differ {fee_bad[:3]}; fee recipient USDC "
                            f"{fee_balance} = events {platform_sum} = ledger {ledger_platform}"))

        inviter_sum = sum(p[1] for p in payouts.values())
        ledger_inviter = sum(int(f["inviter_amount"]) for f in db_fees.values())
        inviter_balance = self._usdc(self.inviter, block)
        checks.append(Check("inviter payouts", inviter_balance == inviter_sum == ledger_inviter,
                            f"inviter USDC {inviter_balance} = events {inviter_sum} = ledger {ledger_inviter}"))

        earned_chain: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        paid_to_provider: dict[str, int] = defaultdict(int)
        provider_of = {b["chain_booking_id"]: b["provider_address"] for b in bookings}
        for booking, (_, _, provider_amount, provider, completion) in payouts.items():
            address = provider or Web3.to_checksum_address(provider_of.get(booking, views.get(booking, [0, ""])[1]))
            paid_to_provider[address] += provider_amount
            if completion:
                earned_chain[address][0] += provider_amount
                earned_chain[address][1] += 1
        earned_db = {Web3.to_checksum_address(e["provider_address"]): [int(e["total_earned"]), e["services_completed"]]
                     for e in ProviderEarnings.objects.values("provider_address", "total_earned", "services_completed")
                     if int(e["total_earned"]) or e["services_completed"]}
        earn_bad = [f"{p[:10]} db {earned_db.get(p)} chain {v}"
                    for p, v in earned_chain.items() if earned_db.get(p) != v]
        earn_bad += [f"{p[:10]} db {v} chain none" for p, v in earned_db.items() if p not in earned_chain]
        balance_bad = [f"{p[:10]} USDC {self._usdc(p, block)} paid {paid_to_provider.get(p, 0)}"
                       for p in self.providers if self._usdc(p, block) != paid_to_provider.get(p, 0)]
        checks.append(Check("provider earnings", not earn_bad and not balance_bad,
                            f"{len(earned_chain)} providers with completions, {len(earn_bad)} earnings differ "
                            f"{earn_bad[:3]}; {len(self.providers)} provider balances, {len(balance_bad)} differ "
                            f"{balance_bad[:3]}; total paid to providers {sum(paid_to_provider.values())}"))

        # events: one for one with the chain's logs
        live = list(ChainEvent.objects.exclude(status=EventStatus.REMOVED).values_list(
            "tx_hash", "log_index", "status"))
        live_keys = Counter((t.lower(), i) for t, i, _ in live)
        chain_keys = {(log["tx_hash"].lower(), log["log_index"]) for log in logs}
        twice = [k for k, n in live_keys.items() if n > 1]
        missing = chain_keys - set(live_keys)
        extra = set(live_keys) - chain_keys
        unsettled = Counter(s for _, _, s in live if s != EventStatus.PROCESSED)
        per_booking = Counter((log["booking"], log["name"]) for log in logs)
        checks.append(Check("events (database vs chain logs)",
                            not twice and not missing and not extra and not unsettled,
                            f"chain {len(chain_keys)} logs, database {len(live)} live events "
                            f"({ChainEvent.objects.filter(status=EventStatus.REMOVED).count()} removed by reorgs); "
                            f"missing {len(missing)}, extra {len(extra)}, applied twice {len(twice)}, "
                            f"unsettled {dict(unsettled)}, bookings with a repeated event on chain "
                            f"{sum(1 for n in per_booking.values() if n > 1)}"))

        dead = ChainEvent.objects.filter(status=EventStatus.DEAD_LETTER).count()
        checks.append(Check("dead letters", dead == 0, str(dead)))
        orphans = Orphan.objects.count()
        checks.append(Check("orphans", orphans == 0, str(orphans)))

        flags = Counter(ReconciliationFlag.objects.filter(resolved_at__isnull=True).values_list("kind", flat=True))
        items = Counter(AttentionItem.objects.filter(acknowledged_at__isnull=True).values_list("kind", flat=True))
        attention = Booking.objects.filter(needs_attention=True).count()
        all_flags = ReconciliationFlag.objects.count()
        withdrawn = AttentionItem.objects.filter(acknowledged_at__isnull=False).count()
        evidence = [f"{f.kind} on {f.booking.uuid}: db {f.database_status}, chain {f.chain_status}: {f.detail[:120]}"
                    for f in ReconciliationFlag.objects.filter(resolved_at__isnull=True).select_related("booking")[:3]]
        evidence += [f"{i.kind} on {i.booking.uuid}: {i.reason[:160]}"
                     for i in AttentionItem.objects.filter(acknowledged_at__isnull=True).select_related("booking")[:3]]
        checks.append(Check("open attention (every flag here is false)", not flags and not items and not attention,
                            f"open reconciliation flags {dict(flags)} (raised in the run {all_flags}), "
                            f"open attention items {dict(items)} ({withdrawn} raised and withdrawn), "
                            f"bookings needing attention {attention}" + (f"; open: {evidence}" if evidence else "")))

        stuck = Counter(SentTransaction.objects.filter(
            status__in=[TxStatus.PREPARING, TxStatus.SUBMITTED]).values_list("purpose", flat=True))
        sent = Counter(SentTransaction.objects.values_list("status", flat=True))
        latest = self.w3.eth.get_transaction_count(OPERATOR.address, block)
        pending = self.w3.eth.get_transaction_count(OPERATOR.address, "pending")
        stuck_nonces = sorted(SentTransaction.objects.filter(  # PREPARING rows may not have a nonce yet
            status__in=[TxStatus.PREPARING, TxStatus.SUBMITTED]).values_list("nonce", flat=True),
            key=lambda nonce: -1 if nonce is None else nonce)[:5]
        checks.append(Check("operator sends stuck", not stuck and latest == pending,
                            f"stuck {dict(stuck)} (nonces {stuck_nonces}); operator transactions by status "
                            f"{dict(sent)}; "
                            f"operator nonce mined {latest}, pending {pending}"))

        due = [(u, t) for u, t in auto_complete if t <= due_before]
        by_uuid = {str(b["uuid"]): b for b in bookings}
        not_done = [u for u, _ in due if by_uuid[u]["status"] != "COMPLETED"
                    or views[by_uuid[u]["chain_booking_id"]][7] != 2]
        checks.append(Check("auto-complete", not not_done,
                            f"{len(auto_complete)} bookings left paid, {len(due)} due, {len(due) - len(not_done)} "
                            f"completed by the operator, not completed {not_done[:5]}"))
        return checks


def project_ledger_check(system) -> Check:
    """The project's own ledger check (`manage.py check_ledger`, reconciliation.ledger) on the
    settled system: it must agree with the checks above (exit 0, no mismatch)."""
    result = system.manage("check_ledger")
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return Check("manage.py check_ledger", result.returncode == 0,
                 f"exit {result.returncode}: " + " | ".join(line.strip()[:200] for line in lines[:4]))
