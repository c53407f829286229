"""Client flows, as a frontend and a wallet play them: Sign-In with Ethereum (EIP-4361, wallets
with their own keys), create a booking, get the payment authorization, pay on chain (approve +
createAndPayBooking, or an EIP-2612 permit with createAndPayBookingWithPermit), report the
transaction (submit-transaction) or wait for the scanner, then complete it, cancel it (customer
at each policy tier, or provider), or leave it paid for auto-complete.

Wallets talk to anvil directly (their own node, not the backend's faulty primary). A reorg can
drop a wallet's mined transaction: like a wallet, the flow sends it again (same signed bytes,
same nonce) while it waits. A reorg can also leave a transaction reverted that had succeeded (a
party's cancellation or completion mined before the payment it needs was mined again, a payment
mined again after its authorization lapsed): like a careful client, the flow reads the booking
on chain, waits for the payment (or pays again with a new authorization) and sends the call
again, for as long as FLOW_TIMEOUT. A booking refused at the unpaid-booking cap waits for one
of the wallet's unpaid bookings to be paid again or to expire (docs/api.md, *Create*). Every
HTTP answer of 500 or more is counted; a 503 with Retry-After is the backend's documented "try
again" and is retried after the wait it names.
"""
from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from contracts.artifacts import abi_type
from contracts.deploy import encode_call, escrow_abi, usdc_abi

GAS_PRICE = {"maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 10**9}
FUNDED_USDC = 10**15  # a billion USDC per customer
FLOW_TIMEOUT = 240.0  # seconds a flow waits for the API to show a status before it is counted as stalled
POLL = 0.5
# A wallet waiting for something sends again its transactions of this many last seconds that a reorg
# dropped (reorgs here are at most 10 blocks deep); the final sweep looks at all of them.
RESEND_WINDOW = 600.0
POOL_STUCK_SECONDS = 15.0
# A booking refused at the unpaid-booking cap waits this long for a place: an unpaid booking of a
# stalled flow expires once its payment authorization (AUTHORIZATION_TTL_SECONDS, 300) and the
# grace after it (AUTHORIZATION_EXPIRY_GRACE_SECONDS, 120) ran out, at the next reconciliation run.
UNPAID_CAP_WAIT = 300 + 120 + 60.0
# A cancellation authorization this close to its expiry is not sent: it could lapse before it is mined.
CANCELLATION_EXPIRY_MARGIN = 30
# A party's cancellation or completion is watched until it is this many blocks deep (reorgs here are
# at most 10 deep): until then a reorg can take it back after the flow saw it.
FINAL_DEPTH = 12
# After the run, how long a flow runner keeps watching its last settlements until they are final.
FINAL_WATCH_SECONDS = 120.0
# BookingEscrow.Status
CHAIN_NONE, CHAIN_PAID, CHAIN_COMPLETED, CHAIN_CANCELLED = range(4)

# kind -> (who acts after payment, scheduled-at lead time, expected cancellation policy tier)
FLOW_KINDS = {
    "complete": ("customer", timedelta(days=2), None),
    "cancel_customer_full_refund": ("customer", timedelta(days=3), "full_refund"),
    "cancel_customer_partial_refund": ("customer", timedelta(hours=10), "partial_refund"),
    "cancel_customer_late": ("customer", timedelta(minutes=30), "late"),
    "cancel_provider": ("provider", timedelta(days=2), "provider_cancelled"),
    "auto_complete": (None, None, None),  # scheduled a few seconds ahead, left PAID
}
FLOW_WEIGHTS = {
    "complete": 20, "cancel_customer_full_refund": 10, "cancel_customer_partial_refund": 10,
    "cancel_customer_late": 10, "cancel_provider": 15, "auto_complete": 35,
}


class FlowError(RuntimeError):
    pass


class TransactionReverted(FlowError):
    pass


class FlowNotStarted(FlowError):
    """The run ended while a flow waited for its booking to be accepted: nothing was booked."""


@dataclass
class DriverStats:
    flows: Counter = field(default_factory=Counter)  # kind -> finished
    payments: Counter = field(default_factory=Counter)  # approve | permit
    confirmations: Counter = field(default_factory=Counter)  # submit-transaction | scanner
    stalled: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    http_5xx: Counter = field(default_factory=Counter)  # "503 POST /api/..." -> count (not retryable ones)
    retryable_503: int = 0
    rebroadcasts: int = 0
    pool_resets: int = 0
    cancellations_sent_again: int = 0
    completions_sent_again: int = 0  # completeService reverted (payment not mined again yet), sent again
    payments_sent_again: int = 0  # a payment reverted (or was mined again reverted): a new authorization, paid again
    unpaid_cap_waits: int = 0  # bookings refused at the unpaid-booking cap that waited for a place
    resend_refusals: Counter = field(default_factory=Counter)
    tier_mismatches: list = field(default_factory=list)
    auto_complete_bookings: list = field(default_factory=list)  # (uuid, scheduled_at)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, attr: str, key=None, amount: int = 1) -> None:
        with self.lock:
            target = getattr(self, attr)
            if isinstance(target, Counter):
                target[key] += amount
            elif isinstance(target, list):
                target.append(key)
            else:
                setattr(self, attr, target + amount)


# -- the wallet's own node ---------------------------------------------------------------------
ANVIL_MID_REORG_ERRORS = ("BlockOutOfRangeError", "Resource not found", "Required data unavailable")
NODE_RETRIES = 10


class Node:
    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def call(self, method: str, params: list | None = None):
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        for attempt in range(NODE_RETRIES + 1):
            reply = session.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                 "params": params or []}, timeout=30).json()
            error = reply.get("error")
            if not error:
                return reply["result"]
            message = str(error.get("message"))
            # anvil answers a call at "latest" that races an anvil_reorg with these: asked again, it answers.
            if attempt == NODE_RETRIES or not any(m in message for m in ANVIL_MID_REORG_ERRORS):
                raise FlowError(f"{method}: {message}")
            time.sleep(0.2)


def _function_names() -> dict[bytes, str]:
    names = {}
    for abi in (escrow_abi(), usdc_abi()):
        for entry in abi:
            if entry.get("type") in ("function", "error"):
                signature = f"{entry['name']}({','.join(abi_type(i) for i in entry['inputs'])})"
                names[keccak(text=signature)[:4]] = entry["name"]
    return names


SELECTORS = _function_names()  # 4-byte selector -> function or error name (to say what reverted, and why)


class Wallet:
    """A key, its transaction nonce (kept here: a reorg can lower the chain's count, and every
    transaction it dropped is sent again with its own nonce) and what it sent."""

    def __init__(self, label: str, node: Node, chain_id: int, stats: DriverStats):
        self.account = Account.from_key(keccak(text=f"bookme-chaos-wallet:{label}"))
        self.address = self.account.address
        self.node = node
        self.chain_id = chain_id
        self.stats = stats
        self.next_nonce = 0
        self.calls: dict[str, dict] = {}  # tx hash -> the call, to replay it when it reverted
        self._refused_since: dict[str, float] = {}  # tx hash -> first "already imported" while unmined
        self.sent: dict[str, tuple[str, float, int]] = {}  # tx hash -> (signed raw transaction, when sent, nonce)
        self.token = ""

    def send(self, to: str, data: bytes, gas: int) -> str:
        tx = {"to": to, "data": data, "gas": gas, "nonce": self.next_nonce, "chainId": self.chain_id,
              "value": 0, **GAS_PRICE}
        raw = "0x" + self.account.sign_transaction(tx).raw_transaction.hex().removeprefix("0x")
        tx_hash = self.node.call("eth_sendRawTransaction", [raw])
        self.next_nonce += 1
        self.sent[tx_hash] = (raw, time.monotonic(), tx["nonce"])
        self.calls[tx_hash] = {"from": self.address, "to": to, "data": "0x" + data.hex()}
        return tx_hash

    def resend_dropped(self, *, within_seconds: float | None = RESEND_WINDOW) -> int:
        """Send again every transaction of this wallet (sent in the last `within_seconds`; None: all)
        that has no receipt: a reorg dropped it. All of them, in nonce order: one left out holds
        back every later one.

        anvil's pool can lose track of an account after anvil_reorg: a transaction at the
        account's next nonce stays "queued" for good, and sending it again only answers
        "already imported". One refused that way for POOL_STUCK_SECONDS makes the wallet take
        its own transactions out of anvil's pool (anvil_removePoolTransactions) and send them again."""
        horizon = time.monotonic() - within_seconds if within_seconds is not None else float("-inf")
        missing = sorted(
            ((nonce, tx_hash, raw) for tx_hash, (raw, sent_at, nonce) in list(self.sent.items())
             if sent_at >= horizon and self.node.call("eth_getTransactionReceipt", [tx_hash]) is None),
        )
        resent, stuck = 0, False
        for _, tx_hash, raw in missing:
            try:
                self.node.call("eth_sendRawTransaction", [raw])
                resent += 1
                self._refused_since.pop(tx_hash, None)
            except FlowError as exc:
                self.stats.add("resend_refusals", str(exc)[:80])
                since = self._refused_since.setdefault(tx_hash, time.monotonic())
                stuck = stuck or time.monotonic() - since > POOL_STUCK_SECONDS
        if stuck:
            self.node.call("anvil_removePoolTransactions", [self.address])
            self.stats.add("pool_resets")
            self._refused_since.clear()
            for _, _, raw in missing:
                with contextlib.suppress(FlowError):
                    self.node.call("eth_sendRawTransaction", [raw])
                    resent += 1
        if resent:
            self.stats.add("rebroadcasts", amount=resent)
        return resent

    def _why_reverted(self, tx_hash: str, receipt: dict) -> str:
        """The function and the contract's error, replaying the call at the block before it."""
        call = self.calls[tx_hash]
        function = SELECTORS.get(bytes.fromhex(call["data"][2:10]), call["data"][:10])
        block = hex(int(receipt["blockNumber"], 16) - 1)
        reply = requests.post(self.node.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_call",
                                                   "params": [call, block]}, timeout=30).json()
        data = str((reply.get("error") or {}).get("data") or "")
        error = SELECTORS.get(bytes.fromhex(data[2:10]), data[:10]) if data.startswith("0x") and len(data) >= 10 \
            else (reply.get("error") or {}).get("message", "no error when replayed")
        return f"{function} reverted: {error}"

    def permit_nonce(self, usdc: str, timeout: float = FLOW_TIMEOUT) -> int:
        """The EIP-2612 nonce the next permit must carry: USDC's nonces(owner), read at a block
        where every transaction this wallet sent is mined (its mined count there = next_nonce).

        Not a count of the permits signed: a payment that reverts does not use its permit (the
        contract's permit is in a try/catch and the whole call reverts), and one a reorg put back
        after its authorization lapsed reverts when it is mined again. Nor the token's count while
        a payment of ours is unmined: it would still take the nonce read. Both reads are at one
        block hash, so a reorg between them cannot mix two chains."""
        call = {"to": usdc, "data": "0x" + encode_call(usdc_abi(), "nonces", [self.address]).hex()}
        deadline = time.monotonic() + timeout
        last_resend = time.monotonic()
        while True:
            with contextlib.suppress(FlowError):  # the block was reorged away between the reads: read again
                block = {"blockHash": self.node.call("eth_getBlockByNumber", ["latest", False])["hash"]}
                if int(self.node.call("eth_getTransactionCount", [self.address, block]), 16) >= self.next_nonce:
                    return int(self.node.call("eth_call", [call, block]), 16)
            if time.monotonic() - last_resend > 3:
                self.resend_dropped()
                last_resend = time.monotonic()
            if time.monotonic() > deadline:
                raise FlowError(f"transactions of {self.address} not all mined in {timeout:.0f} s (permit nonce)")
            time.sleep(POLL)

    def receipt_status(self, tx_hash: str) -> int | None:
        """1 mined, 0 mined and reverted, None not mined (now: a reorg can change each)."""
        receipt = self.node.call("eth_getTransactionReceipt", [tx_hash])
        return None if receipt is None else int(receipt["status"], 16)

    def why_reverted(self, tx_hash: str) -> str:
        receipt = self.node.call("eth_getTransactionReceipt", [tx_hash])
        return f"{self._why_reverted(tx_hash, receipt)} (tx {tx_hash})" if receipt else f"tx {tx_hash} not mined"

    def unmined(self) -> list[str]:
        """What is known of each transaction of this wallet that has no receipt (for the report)."""
        out = []
        for tx_hash, (_, _, nonce) in self.sent.items():
            if self.node.call("eth_getTransactionReceipt", [tx_hash]) is None:
                chain_nonce = int(self.node.call("eth_getTransactionCount", [self.address, "latest"]), 16)
                known = self.node.call("eth_getTransactionByHash", [tx_hash]) is not None
                out.append(f"{tx_hash[:12]} of {self.address[:10]}: nonce {nonce}, account's mined count "
                           f"{chain_nonce}, {'in the pool' if known else 'unknown to the node'}")
        return out

    def wait_mined(self, tx_hash: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        last_resend = time.monotonic()
        while True:
            receipt = self.node.call("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                if int(receipt["status"], 16) != 1:
                    raise TransactionReverted(f"{self._why_reverted(tx_hash, receipt)} (tx {tx_hash})")
                return receipt
            if time.monotonic() - last_resend > 3:
                self.resend_dropped()
                last_resend = time.monotonic()
            if time.monotonic() > deadline:
                raise FlowError(f"transaction {tx_hash} not mined in {timeout:.0f} s")
            time.sleep(POLL)

    def personal_sign(self, text: str) -> str:
        return "0x" + self.account.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")


# -- the API ------------------------------------------------------------------------------------
class Api:
    def __init__(self, base_url: str, stats: DriverStats):
        self.base_url = base_url
        self.stats = stats
        self._local = threading.local()

    def request(self, method: str, path: str, *, token: str = "", body=None, accept=(200, 201, 202),
                timeout: float = 60) -> requests.Response:
        """The answer once its status is in `accept` or a 4xx; 5xx are counted and retried until `timeout`."""
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = session.request(method, self.base_url + path, json=body, headers=headers, timeout=35)
            except requests.RequestException as exc:
                if time.monotonic() > deadline:
                    raise FlowError(f"{method} {path}: {exc}") from exc
                time.sleep(1)
                continue
            code = response.status_code
            if code in accept or 400 <= code < 500 and code != 429:
                return response
            if code == 429 or (code == 503 and response.headers.get("Retry-After")):
                if code == 503:
                    self.stats.add("retryable_503")
                wait = float(response.headers.get("Retry-After") or 1)
            else:
                self.stats.add("http_5xx", f"{code} {method} {_route(path)}: {response.text[:160]}")
                wait = 1.0
            if time.monotonic() > deadline:
                raise FlowError(f"{method} {path}: {code} {response.text[:200]}")
            time.sleep(min(wait, 5))


def _settled_on_chain(status: str) -> int:
    return CHAIN_COMPLETED if status == "COMPLETED" else CHAIN_CANCELLED


def _route(path: str) -> str:
    parts = path.strip("/").split("/")
    return "/" + "/".join("<id>" if len(p) == 36 else p for p in parts) + "/"


# -- one flow -------------------------------------------------------------------------------------
@dataclass
class Payment:
    """A booking's payment: every transaction its customer sent for it (a reverted one, then the next)."""
    booking_id: str
    chain_booking_id: bytes
    tx_hashes: list[str]

    def paying_tx(self, wallet: Wallet) -> str:
        """The one mined without a revert (a reorg can put an earlier one back), else the last."""
        return next((h for h in reversed(self.tx_hashes) if wallet.receipt_status(h) == 1), self.tx_hashes[-1])


@dataclass
class Settlement:
    """A party's completeService or cancelBooking of a booking and every transaction sent for it."""
    kind: str
    payment: Payment
    wallet: Wallet
    status: str  # what the API shows once it is mined: COMPLETED or CANCELLED
    call_data: Callable[[], bytes]
    gas: int
    sent_again: str  # the DriverStats counter of sending it again
    tx_hashes: list[str] = field(default_factory=list)


class FlowRunner:
    """Runs flows one after another for one customer and one provider, until told to stop."""

    def __init__(self, index: int, *, api: Api, node: Node, escrow: str, usdc: str, chain_id: int,
                 stats: DriverStats, siwe_domain: str, rng: random.Random, auto_lead_seconds: int):
        self.api = api
        self.node = node
        self.escrow = escrow
        self.usdc = usdc
        self.chain_id = chain_id
        self.stats = stats
        self.siwe_domain = siwe_domain
        self.rng = rng
        self.auto_lead_seconds = auto_lead_seconds
        self.customer = Wallet(f"customer-{index}", node, chain_id, stats)
        self.provider = Wallet(f"provider-{index}", node, chain_id, stats)
        self.stop_event = threading.Event()  # run()'s: a booking waiting at the unpaid cap gives up when set
        self.watched: list[Settlement] = []  # settled in the API, not yet FINAL_DEPTH deep on chain

    # setup ------------------------------------------------------------------------------
    def fund(self) -> list[str]:
        """ETH for gas (both wallets) and USDC (the customer mints it: the mock's mint is open)."""
        for wallet in (self.customer, self.provider):
            self.node.call("anvil_setBalance", [wallet.address, hex(10**22)])
        return [self.customer.send(self.usdc, encode_call(usdc_abi(), "mint", [self.customer.address, FUNDED_USDC]),
                                   100_000)]

    def sign_in(self, wallet: Wallet) -> None:
        nonce = self.api.request("POST", "/api/auth/nonce/").json()["nonce"]
        issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message = "\n".join([
            f"{self.siwe_domain} wants you to sign in with your Ethereum account:", wallet.address, "",
            "Sign in to BookMe.", "", f"URI: http://{self.siwe_domain}/", "Version: 1",
            f"Chain ID: {self.chain_id}", f"Nonce: {nonce}", f"Issued At: {issued}",
        ])
        response = self.api.request("POST", "/api/auth/verify/",
                                    body={"message": message, "signature": wallet.personal_sign(message)})
        if response.status_code != 200:
            raise FlowError(f"sign-in of {wallet.address}: {response.status_code} {response.text[:200]}")
        wallet.token = response.json()["token"]

    def redeem(self, code: str) -> None:
        response = self.api.request("POST", "/api/referrals/redeem/", token=self.customer.token, body={"code": code})
        if response.status_code != 201:
            raise FlowError(f"redeeming an invite code: {response.status_code} {response.text[:200]}")

    # the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, only: str | None = None) -> None:
        self.stop_event = stop
        kinds, weights = zip(*FLOW_WEIGHTS.items(), strict=True)
        while not stop.is_set():
            kind = only or self.rng.choices(kinds, weights)[0]
            try:
                self._keep_settled()
                self.flow(kind)
                self.stats.add("flows", kind)
            except FlowNotStarted:
                break
            except FlowError as exc:
                self.stats.add("stalled", f"{kind}: {exc}")
                time.sleep(5)
            except Exception as exc:  # noqa: BLE001 (one broken flow must not end the driver)
                self.stats.add("errors", f"{kind}: {type(exc).__name__}: {exc}")
                time.sleep(1)
        deadline = time.monotonic() + FINAL_WATCH_SECONDS
        while self.watched and time.monotonic() < deadline:
            self._keep_settled()
            time.sleep(2)

    def flow(self, kind: str) -> None:
        actor, lead, tier = FLOW_KINDS[kind]
        if kind == "auto_complete":
            lead = timedelta(seconds=self.auto_lead_seconds)
        scheduled_at = datetime.now(UTC) + lead
        amount = self.rng.randrange(1_000_000, 500_000_000)
        booking = self._create(amount, scheduled_at)
        booking_id = booking["id"]
        payment = self._pay_and_confirm(booking_id)
        if kind == "auto_complete":
            self.stats.add("auto_complete_bookings", (booking_id, scheduled_at))
            return
        if kind == "complete":
            complete = encode_call(escrow_abi(), "completeService", [payment.chain_booking_id])
            self._settle(Settlement(kind, payment, self.customer, "COMPLETED", lambda: complete, 200_000,
                                    "completions_sent_again"))
            return
        wallet = self.customer if actor == "customer" else self.provider
        cancellation = self._request_cancellation(booking_id, wallet)
        if cancellation["policy_tier"] != tier:
            self.stats.add("tier_mismatches", f"{kind}: expected {tier}, got {cancellation['policy_tier']}")
        held = [cancellation]

        def cancel_call() -> bytes:
            # Waiting for a payment a reorg took away can outlast the authorization: ask for a new one.
            if int(held[0]["message"]["expiry"]) - time.time() < CANCELLATION_EXPIRY_MARGIN:
                held[0] = self._request_cancellation(booking_id, wallet)
            m = held[0]["message"]
            values = (bytes.fromhex(m["bookingId"][2:]), int(m["customerAmount"]), int(m["providerAmount"]),
                      int(m["platformAmount"]), int(m["inviterAmount"]), m["reason"], int(m["expiry"]),
                      int(m["nonce"]))
            return encode_call(escrow_abi(), "cancelBooking", [values, bytes.fromhex(held[0]["signature"][2:])])

        self._settle(Settlement(kind, payment, wallet, "CANCELLED", cancel_call, 300_000, "cancellations_sent_again"))

    # steps ----------------------------------------------------------------------------
    def _create(self, amount: int, scheduled_at: datetime) -> dict:
        """The new booking. Refused at the unpaid-booking cap, it waits, as the API says ("pay one,
        or let one expire"): what holds the places is a payment of this wallet that a reorg dropped
        (sent again meanwhile) or the unpaid booking of a stalled flow (it expires once its payment
        authorization lapsed; there is no API call that cancels an unpaid booking)."""
        deadline = time.monotonic() + UNPAID_CAP_WAIT
        waited = False
        while True:
            response = self.api.request("POST", "/api/bookings/", token=self.customer.token, body={
                "provider": self.provider.address, "amount": amount, "scheduled_at": scheduled_at.isoformat(),
                "description": "chaos run",
            })
            if response.status_code == 201:
                return response.json()
            at_cap = response.status_code == 409 and "unpaid booking" in response.text
            if not at_cap or time.monotonic() > deadline:
                raise FlowError(f"create: {response.status_code} {response.text[:200]}")
            if self.stop_event.is_set():
                raise FlowNotStarted("the run ended while the booking waited at the unpaid-booking cap")
            if not waited:
                self.stats.add("unpaid_cap_waits")
                waited = True
            self.customer.resend_dropped()
            time.sleep(5)

    def _authorize(self, booking_id: str) -> dict:
        # 409 when paying again: the API still shows the payment that a reorg since dropped or made
        # revert; it follows the chain.
        return self._post_while_reorged(f"/api/bookings/{booking_id}/authorize-payment/", self.customer.token,
                                        None, "authorize-payment")

    def _post_while_reorged(self, path: str, token: str, body: dict | None, label: str) -> dict:
        """POST until 200; a 409 meanwhile is the API not yet past a reorg that took the payment: the
        customer sends again what the reorg dropped, and the call is asked again, for FLOW_TIMEOUT."""
        deadline = time.monotonic() + FLOW_TIMEOUT
        while True:
            response = self.api.request("POST", path, token=token, body=body)
            if response.status_code == 200:
                return response.json()
            if response.status_code != 409 or time.monotonic() > deadline:
                raise FlowError(f"{label}: {response.status_code} {response.text[:200]}")
            self.customer.resend_dropped()
            time.sleep(1)

    def _pay_and_confirm(self, booking_id: str) -> Payment:
        """Authorize, pay and wait until the API shows PAID. A payment that reverted (nothing was
        escrowed) is made again with a new authorization while the booking is unpaid on chain."""
        deadline = time.monotonic() + FLOW_TIMEOUT
        auth = self._authorize(booking_id)
        payment = Payment(booking_id, bytes.fromhex(auth["message"]["bookingId"][2:]), [self._pay(auth)])
        while True:
            try:
                self._confirm(booking_id, payment.paying_tx(self.customer), "PAID")
                return payment
            except TransactionReverted:
                if time.monotonic() > deadline:
                    raise
                self._ensure_paid(payment, deadline)

    def _ensure_paid(self, payment: Payment, deadline: float) -> int:
        """The booking's status on chain once it is paid (or later). While a payment of ours is
        unmined the wallet sends again what a reorg dropped; once every one is mined reverted, it
        pays again with a new authorization."""
        last_resend = time.monotonic()
        while True:
            status = self._chain_status(payment.chain_booking_id)
            if status != CHAIN_NONE:
                return status
            if all(self.customer.receipt_status(tx_hash) == 0 for tx_hash in payment.tx_hashes):
                if time.monotonic() > deadline:
                    raise TransactionReverted(self.customer.why_reverted(payment.tx_hashes[-1]))
                self.stats.add("payments_sent_again")
                payment.tx_hashes.append(self._pay(self._authorize(payment.booking_id)))
            elif time.monotonic() - last_resend > 3:
                self.customer.resend_dropped()
                last_resend = time.monotonic()
            if time.monotonic() > deadline:
                raise FlowError(f"booking {payment.booking_id} not paid on chain after {FLOW_TIMEOUT:.0f} s "
                                f"(payments {payment.tx_hashes})")
            time.sleep(POLL)

    def _settle(self, settlement: Settlement) -> None:
        """Send the party's completeService/cancelBooking and wait until the API shows its status;
        then watch it (_keep_settled) until it is final.

        It reverts when a reorg took away the payment it needs and the call was mined before the
        payment was mined again (two accounts, no order between them; BookingNotPaid): then the
        wallet waits until the booking is paid on chain again and the API shows it paid again,
        and sends the call again, for as long as FLOW_TIMEOUT."""
        payment, wallet, status = settlement.payment, settlement.wallet, settlement.status
        booking_id = payment.booking_id
        deadline = time.monotonic() + FLOW_TIMEOUT
        while True:
            tx = wallet.send(self.escrow, settlement.call_data(), settlement.gas)
            settlement.tx_hashes.append(tx)
            try:
                self._confirm(booking_id, tx, status, sender=wallet)
                break
            except TransactionReverted:
                if time.monotonic() > deadline:
                    raise
                chain_status = self._ensure_paid(payment, deadline)
                if chain_status == _settled_on_chain(status):  # an earlier attempt, put back after the payment
                    self._wait_status(booking_id, status, wallet)
                    break
                if chain_status != CHAIN_PAID:
                    raise
                # PENDING_CANCELLATION: the API had not seen the reorg yet (the chain says paid).
                if self._wait_status(booking_id, ("PAID", "PENDING_CANCELLATION", status), wallet) == status:
                    break
                self.stats.add(settlement.sent_again)
        if settlement not in self.watched:
            self.watched.append(settlement)

    def _keep_settled(self) -> None:
        """Watch the flows' cancellations and completions until they are FINAL_DEPTH deep. A reorg
        can take one back after the API showed it (the flow is counted): the wallet sends it
        again (resend_dropped), and mined before the payment it needs (mined again too) it
        reverts: then it is settled again (_settle), as the flow did."""
        if not self.watched:
            return
        self.customer.resend_dropped()  # the payments they need
        if any(settlement.wallet is self.provider for settlement in self.watched):
            self.provider.resend_dropped()
        head = int(self.node.call("eth_blockNumber"), 16)
        for settlement in list(self.watched):
            receipts = [self.node.call("eth_getTransactionReceipt", [h]) for h in settlement.tx_hashes]
            if any(r is None for r in receipts):
                continue  # dropped: sent again, its outcome comes later
            settled = [r for r in receipts if int(r["status"], 16) == 1]
            chain_status = self._chain_status(settlement.payment.chain_booking_id)
            if settled and chain_status == _settled_on_chain(settlement.status):
                if head - int(settled[0]["blockNumber"], 16) >= FINAL_DEPTH:
                    self.watched.remove(settlement)
                continue
            if chain_status not in (CHAIN_NONE, CHAIN_PAID):
                self.watched.remove(settlement)
                self.stats.add("stalled", f"{settlement.kind}: booking {settlement.payment.booking_id} is "
                                          f"{chain_status} on chain, not {settlement.status}, after a reorg")
                continue
            self.stats.add(settlement.sent_again)  # every attempt reverted: settle it again
            try:
                self._ensure_paid(settlement.payment, time.monotonic() + FLOW_TIMEOUT)
                self._settle(settlement)
            except FlowError as exc:
                self.watched.remove(settlement)
                self.stats.add("stalled", f"{settlement.kind}, settled again after a reorg: {exc}")

    def _chain_status(self, chain_booking_id: bytes) -> int:
        """BookingEscrow's status of the booking at the head (getBooking: a static BookingView, status last)."""
        call = {"to": self.escrow, "data": "0x" + encode_call(escrow_abi(), "getBooking", [chain_booking_id]).hex()}
        return int(self.node.call("eth_call", [call, "latest"])[-64:], 16)

    def _pay(self, auth: dict) -> str:
        m = auth["message"]
        values = (bytes.fromhex(m["bookingId"][2:]), m["customer"], m["provider"], m["inviter"], int(m["amount"]),
                  int(m["platformFeeRate"]), int(m["inviterFeeRate"]), int(m["expiry"]), int(m["nonce"]))
        signature = bytes.fromhex(auth["signature"][2:])
        if self.rng.random() < 0.5:
            self.stats.add("payments", "approve")
            approve = self.customer.send(self.usdc, encode_call(usdc_abi(), "approve", [self.escrow, values[4]]),
                                         100_000)
            self.customer.wait_mined(approve)
            data = encode_call(escrow_abi(), "createAndPayBooking", [values, signature])
            return self.customer.send(self.escrow, data, 400_000)
        self.stats.add("payments", "permit")
        deadline = int(time.time()) + 3600
        permit_nonce = self.customer.permit_nonce(self.usdc)
        permit = Account.sign_typed_data(self.customer.account.key, full_message={
            "types": {
                "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                 {"name": "chainId", "type": "uint256"},
                                 {"name": "verifyingContract", "type": "address"}],
                "Permit": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"},
                           {"name": "value", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                           {"name": "deadline", "type": "uint256"}],
            },
            "primaryType": "Permit",
            "domain": {"name": "USD Coin", "version": "1", "chainId": self.chain_id, "verifyingContract": self.usdc},
            "message": {"owner": self.customer.address, "spender": self.escrow, "value": values[4],
                        "nonce": permit_nonce, "deadline": deadline},
        })
        data = encode_call(escrow_abi(), "createAndPayBookingWithPermit", [
            values, signature, deadline, permit.v, permit.r.to_bytes(32, "big"), permit.s.to_bytes(32, "big"),
        ])
        return self.customer.send(self.escrow, data, 450_000)

    def _confirm(self, booking_id: str, tx_hash: str, status: str, sender: Wallet | None = None):
        """Wait until the API shows `status`: report the transaction (half the time) or let the scanner find it."""
        sender = sender or self.customer
        sender.wait_mined(tx_hash)
        if self.rng.random() < 0.5:
            self.stats.add("confirmations", "submit-transaction")
            response = self.api.request("POST", f"/api/bookings/{booking_id}/submit-transaction/",
                                        token=sender.token, body={"tx_hash": tx_hash})
            if response.status_code not in (200, 202, 409):
                raise FlowError(f"submit-transaction: {response.status_code} {response.text[:200]}")
        else:
            self.stats.add("confirmations", "scanner")
        self._wait_status(booking_id, status, sender, tx_hash=tx_hash)

    def _wait_status(self, booking_id: str, status: str | tuple[str, ...], sender: Wallet, *,
                     tx_hash: str | None = None) -> str:
        """The booking's status once the API shows one of `status`. `tx_hash` (of `sender`): the
        transaction that should get it there; TransactionReverted when a reorg made it revert
        (mined again after another, or before the payment it needs)."""
        wanted = (status,) if isinstance(status, str) else status
        deadline = time.monotonic() + FLOW_TIMEOUT
        last_resend = time.monotonic()
        seen = None
        while time.monotonic() < deadline:
            response = self.api.request("GET", f"/api/bookings/{booking_id}/", token=self.customer.token)
            seen = response.json().get("status") if response.status_code == 200 else response.status_code
            if seen in wanted:
                return seen
            if time.monotonic() - last_resend > 3:
                if tx_hash is not None and sender.receipt_status(tx_hash) == 0:
                    raise TransactionReverted(sender.why_reverted(tx_hash))
                self.customer.resend_dropped()
                if sender is not self.customer:
                    sender.resend_dropped()
                last_resend = time.monotonic()
            time.sleep(POLL)
        raise FlowError(f"booking {booking_id} still {seen} after {FLOW_TIMEOUT:.0f} s (waiting for {status})")

    def _request_cancellation(self, booking_id: str, wallet: Wallet) -> dict:
        # 409: a reorg took the payment back for now (the booking is not PAID).
        return self._post_while_reorged(f"/api/bookings/{booking_id}/request-cancellation/", wallet.token,
                                        {"reason": "chaos run: plans changed"}, "request-cancellation")


# -- all flows ----------------------------------------------------------------------------------
class Driver:
    """`flows` concurrent flow runners; half of the customers were invited (inviter payouts)."""

    def __init__(self, *, flows: int, base_url: str, node_url: str, escrow: str, usdc: str, chain_id: int,
                 siwe_domain: str, seed: int, auto_lead_seconds: int):
        self.stats = DriverStats()
        self.api = Api(base_url, self.stats)
        self.node = Node(node_url)
        self.chain_id = chain_id
        self.siwe_domain = siwe_domain
        self.runners = [
            FlowRunner(i, api=self.api, node=self.node, escrow=escrow, usdc=usdc, chain_id=chain_id,
                       stats=self.stats, siwe_domain=siwe_domain, rng=random.Random(seed * 1000 + i),
                       auto_lead_seconds=auto_lead_seconds)
            for i in range(flows)
        ]
        self.inviter = Wallet("inviter", self.node, chain_id, self.stats)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def prepare(self) -> None:
        hashes = [(runner.customer, h) for runner in self.runners for h in runner.fund()]
        for wallet, tx_hash in hashes:
            wallet.wait_mined(tx_hash)
        helper = self.runners[0]
        helper.sign_in(self.inviter)
        response = self.api.request("POST", "/api/referrals/invite-codes/", token=self.inviter.token)
        if response.status_code != 201:
            raise FlowError(f"invite code: {response.status_code} {response.text[:200]}")
        code = response.json()["code"]
        for i, runner in enumerate(self.runners):
            runner.sign_in(runner.customer)
            runner.sign_in(runner.provider)
            if i % 2 == 0:
                runner.redeem(code)

    def bury_setup(self, *, blocks: int) -> int:
        """Mine `blocks` blocks over the set-up; returns the head, below which no reorg may go."""
        for _ in range(blocks):
            self.node.call("evm_mine")
        return int(self.node.call("eth_blockNumber"), 16)

    def start(self) -> None:
        for runner in self.runners:
            thread = threading.Thread(target=runner.run, args=(self.stop_event,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = FLOW_TIMEOUT + 60) -> None:
        """No new flows; the ones under way finish (or stall out)."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def resend_dropped(self) -> int:
        """Every wallet sends again what a late reorg dropped (a wallet keeps retrying its own)."""
        return sum(w.resend_dropped(within_seconds=None) for r in self.runners for w in (r.customer, r.provider))

    def unmined(self) -> list[str]:
        return [line for r in self.runners for w in (r.customer, r.provider) for line in w.unmined()]
