"""Test/dev tooling for BookingEscrow on a local chain: a raw JSON-RPC client that signs
EIP-712 authorizations with eth-account, sends locally signed transactions, decodes custom
errors and raw logs with eth_abi. Used by tests/contracts; handy in a shell against anvil.

Not for production: it uses anvil's public dev keys by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from .anvil import (
    DEPLOYER,
    FEE_RECIPIENT,
    OPERATOR,
    SIGNER,
    USER_ACCOUNTS,
)
from .artifacts import ERROR_SELECTORS, escrow_abi, usdc_abi
from .deploy import Deployment, encode_call

USDC = 10**6
INITIAL_CUSTOMER_BALANCE = 1_000_000 * USDC
MAX_UINT256 = 2**256 - 1

# Role names used by the tests (anvil accounts 4..9).
CUSTOMER, CUSTOMER2, PROVIDER, PROVIDER2, INVITER, STRANGER = USER_ACCOUNTS

# The fixed event layout from DESIGN.md, written out independently of the ABI so the tests
# catch an ABI that drifts from it: (topic0, non-indexed arg names, non-indexed arg types).
DESIGN_EVENTS = {
    "BookingCreatedAndPaid": (
        "0xf84f3e7a3f966752b4367f1e193649e6c1294adf8cd4db667f252158dd291684",
        ["customer", "provider", "inviter", "amount", "platformFeeRate", "inviterFeeRate"],
        ["address", "address", "address", "uint256", "uint256", "uint256"],
    ),
    "ServiceCompleted": (
        "0xda9c8301a17536ae73232dcfbf09f6c3380f78a679244f500d725557a101f657",
        ["provider", "providerAmount", "platformFee", "inviterFee"],
        ["address", "uint256", "uint256", "uint256"],
    ),
    "BookingCancelled": (
        "0x0c42a6337d705a780417c44f0395120e0896a63c6cffcff7e0ba57994959f0cd",
        ["cancelledBy", "customerAmount", "providerAmount", "platformAmount", "inviterAmount", "reason"],
        ["address", "uint256", "uint256", "uint256", "uint256", "string"],
    ),
}

# Admin events: (signature, indexed types, non-indexed types).
ADMIN_EVENTS = {
    "SignerUpdated": ("SignerUpdated(address,address)", ["address", "address"], []),
    "OperatorUpdated": ("OperatorUpdated(address,address)", ["address", "address"], []),
    "FeeRecipientUpdated": ("FeeRecipientUpdated(address,address)", ["address", "address"], []),
    "OperatorCompletionDelayUpdated": ("OperatorCompletionDelayUpdated(uint256,uint256)", [], ["uint256", "uint256"]),
    "Paused": ("Paused(address)", [], ["address"]),
    "Unpaused": ("Unpaused(address)", [], ["address"]),
    "OwnershipTransferStarted": ("OwnershipTransferStarted(address,address)", ["address", "address"], []),
    "OwnershipTransferred": ("OwnershipTransferred(address,address)", ["address", "address"], []),
    "Transfer": ("Transfer(address,address,uint256)", ["address", "address"], ["uint256"]),
    "Approval": ("Approval(address,address,uint256)", ["address", "address"], ["uint256"]),
}

BOOKING_FIELDS = [
    ("bookingId", "bytes32"),
    ("customer", "address"),
    ("provider", "address"),
    ("inviter", "address"),
    ("amount", "uint256"),
    ("platformFeeRate", "uint256"),
    ("inviterFeeRate", "uint256"),
    ("expiry", "uint256"),
    ("nonce", "uint256"),
]
CANCELLATION_FIELDS = [
    ("bookingId", "bytes32"),
    ("customerAmount", "uint256"),
    ("providerAmount", "uint256"),
    ("platformAmount", "uint256"),
    ("inviterAmount", "uint256"),
    ("reason", "string"),
    ("expiry", "uint256"),
    ("nonce", "uint256"),
]
BOOKING_VIEW_TYPE = "(address,address,address,uint256,uint256,uint256,uint256,uint8)"
BOOKING_VIEW_FIELDS = [
    "customer", "provider", "inviter", "amount", "platformFeeRate", "inviterFeeRate", "paidAt", "status",
]
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


class Reverted(Exception):
    """A call/transaction reverted; ``name``/``args`` decoded with eth_abi from the revert data."""

    def __init__(self, data: bytes, message: str = "") -> None:
        self.data = data
        self.selector = "0x" + data[:4].hex() if len(data) >= 4 else None
        known = ERROR_SELECTORS.get(self.selector) if self.selector else None
        if known:
            self.name, types, _ = known
            self.args_ = tuple(abi_decode(types, data[4:]))
        else:
            self.name, self.args_ = None, ()
        super().__init__(f"reverted: {self.name}{self.args_} data=0x{data.hex()} {message}")


class RPCError(Exception):
    pass


def booking_id(label: str) -> bytes:
    """Same derivation as the backend: keccak256(utf8(str(uuid)))."""
    return keccak(text=label)


def error_selector(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()[:8]


@dataclass
class EscrowChain:
    """Thin raw-JSON-RPC test client for the deployed stack."""

    w3: Web3
    dep: Deployment

    # -- raw RPC -------------------------------------------------------------------------
    def rpc(self, method: str, params: list | None = None) -> Any:
        reply = self.w3.provider.make_request(method, params or [])
        if "error" in reply:
            err = reply["error"]
            data = err.get("data")
            if isinstance(data, str) and data.startswith("0x"):
                raise Reverted(bytes.fromhex(data[2:]), err.get("message", ""))
            raise RPCError(f"{method}: {err}")
        return reply["result"]

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snap: str) -> None:
        assert self.rpc("evm_revert", [snap]) is True

    def mine(self) -> None:
        self.rpc("evm_mine")

    def latest_timestamp(self) -> int:
        return int(self.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    def set_next_timestamp(self, ts: int) -> None:
        self.rpc("evm_setNextBlockTimestamp", [ts])

    def increase_time(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])
        self.mine()

    # -- calls and transactions ----------------------------------------------------------
    def call_raw(self, to: str, data: bytes, sender: str | None = None, block: str = "latest") -> bytes:
        tx = {"to": to, "data": "0x" + data.hex()}
        if sender:
            tx["from"] = sender
        return bytes.fromhex(self.rpc("eth_call", [tx, block])[2:])

    def call(self, to: str, abi: list, fn: str, args: list, out_types: list[str], sender: str | None = None):
        raw = self.call_raw(to, encode_call(abi, fn, args), sender)
        return abi_decode(out_types, raw)

    def send(self, to: str, abi: list, fn: str, args: list, key: str, *, gas: int | None = None):
        """Estimate against the pending block (raises Reverted with the decoded error), then
        sign with ``key``, send raw, and return the receipt (asserting status 1)."""
        sender = Account.from_key(key).address
        data = encode_call(abi, fn, args)
        if gas is None:
            est = self.rpc("eth_estimateGas", [{"from": sender, "to": to, "data": "0x" + data.hex()}, "pending"])
            gas = int(est, 16) * 12 // 10 + 10_000
        tx = {
            "to": to,
            "data": data,
            "value": 0,
            "gas": gas,
            "chainId": self.dep.chain_id,
            "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
            "maxFeePerGas": 10**11,
            "maxPriorityFeePerGas": 10**9,
        }
        signed = Account.sign_transaction(tx, key)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        if receipt["status"] != 1:
            raise AssertionError(f"transaction reverted on chain: {receipt}")
        return receipt

    def escrow_send(self, fn: str, args: list, key: str, **kw):
        return self.send(self.dep.escrow, escrow_abi(), fn, args, key, **kw)

    def escrow_call(self, fn: str, args: list, out_types: list[str], sender: str | None = None):
        return self.call(self.dep.escrow, escrow_abi(), fn, args, out_types, sender)

    def expect_revert(
        self, fn: str, args: list, key: str, *, to: str | None = None, abi: list | None = None,
    ) -> Reverted:
        """Assert that sending ``fn(args)`` from ``key`` reverts; return the decoded error."""
        try:
            receipt = self.send(to or self.dep.escrow, abi or escrow_abi(), fn, args, key)
        except Reverted as exc:
            return exc
        raise AssertionError(f"{fn} did not revert: {receipt}")

    # -- USDC ----------------------------------------------------------------------------
    def balance(self, who: str) -> int:
        (value,) = self.call(self.dep.usdc, usdc_abi(), "balanceOf", [who], ["uint256"])
        return value

    def balances(self, *who: str) -> list[int]:
        return [self.balance(w) for w in who]

    # -- views ---------------------------------------------------------------------------
    def booking(self, bid: bytes) -> dict[str, Any]:
        (view,) = self.escrow_call("getBooking", [bid], [BOOKING_VIEW_TYPE])
        return dict(zip(BOOKING_VIEW_FIELDS, view, strict=False))

    def bookings(self, ids: list[bytes]) -> list[dict[str, Any]]:
        (views,) = self.escrow_call("getBookings", [ids], [BOOKING_VIEW_TYPE + "[]"])
        return [dict(zip(BOOKING_VIEW_FIELDS, v, strict=False)) for v in views]

    def nonce_used(self, nonce: int) -> bool:
        (used,) = self.escrow_call("usedNonces", [nonce], ["bool"])
        return used

    def address_view(self, fn: str) -> str:
        (value,) = self.escrow_call(fn, [], ["address"])
        return to_checksum_address(value)

    def uint_view(self, fn: str) -> int:
        (value,) = self.escrow_call(fn, [], ["uint256"])
        return value

    def paused(self) -> bool:
        (value,) = self.escrow_call("paused", [], ["bool"])
        return value

    # -- EIP-712 -------------------------------------------------------------------------
    def domain(self, *, chain_id: int | None = None, verifying_contract: str | None = None) -> dict:
        return {
            "name": "BookingEscrow",
            "version": "1",
            "chainId": self.dep.chain_id if chain_id is None else chain_id,
            "verifyingContract": verifying_contract or self.dep.escrow,
        }

    def booking_auth(self, bid: bytes | str = "booking-1", *, customer=CUSTOMER, provider=PROVIDER,
                     inviter: str = ZERO_ADDRESS, amount: int = 100 * USDC, platform_fee_rate: int | None = None,
                     inviter_fee_rate: int | None = None, expiry: int | None = None, nonce: int = 1) -> dict:
        if isinstance(bid, str):
            bid = booking_id(bid)
        if platform_fee_rate is None:
            platform_fee_rate = 1000 if inviter == ZERO_ADDRESS else 500
        if inviter_fee_rate is None:
            inviter_fee_rate = 0 if inviter == ZERO_ADDRESS else 500
        return {
            "bookingId": bid,
            "customer": getattr(customer, "address", customer),
            "provider": getattr(provider, "address", provider),
            "inviter": getattr(inviter, "address", inviter),
            "amount": amount,
            "platformFeeRate": platform_fee_rate,
            "inviterFeeRate": inviter_fee_rate,
            "expiry": self.latest_timestamp() + 300 if expiry is None else expiry,
            "nonce": nonce,
        }

    def cancel_auth(self, bid: bytes | str, *, customer_amount: int, provider_amount: int = 0,
                    platform_amount: int = 0, inviter_amount: int = 0, reason: str = "customer request",
                    expiry: int | None = None, nonce: int = 1001) -> dict:
        if isinstance(bid, str):
            bid = booking_id(bid)
        return {
            "bookingId": bid,
            "customerAmount": customer_amount,
            "providerAmount": provider_amount,
            "platformAmount": platform_amount,
            "inviterAmount": inviter_amount,
            "reason": reason,
            "expiry": self.latest_timestamp() + 300 if expiry is None else expiry,
            "nonce": nonce,
        }

    def sign(self, primary: str, message: dict, key: str = SIGNER.private_key, **domain_kw) -> bytes:
        fields = BOOKING_FIELDS if primary == "BookingAuthorization" else CANCELLATION_FIELDS
        typed = {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                primary: [{"name": n, "type": t} for n, t in fields],
            },
            "primaryType": primary,
            "domain": self.domain(**domain_kw),
            "message": message,
        }
        signable = encode_typed_data(full_message=typed)
        return bytes(Account.sign_message(signable, key).signature)

    def sign_booking(self, auth: dict, key: str = SIGNER.private_key, **domain_kw) -> bytes:
        return self.sign("BookingAuthorization", auth, key, **domain_kw)

    def sign_cancel(self, auth: dict, key: str = SIGNER.private_key, **domain_kw) -> bytes:
        return self.sign("CancellationAuthorization", auth, key, **domain_kw)

    @staticmethod
    def booking_tuple(auth: dict) -> tuple:
        return tuple(auth[n] for n, _ in BOOKING_FIELDS)

    @staticmethod
    def cancel_tuple(auth: dict) -> tuple:
        return tuple(auth[n] for n, _ in CANCELLATION_FIELDS)

    # -- high-level actions --------------------------------------------------------------
    def pay(self, auth: dict, *, key: str | None = None, signature: bytes | None = None):
        key = key or _key_of(auth["customer"])
        sig = self.sign_booking(auth) if signature is None else signature
        return self.escrow_send("createAndPayBooking", [self.booking_tuple(auth), sig], key)

    def create_paid(self, label: str = "booking-1", **kw) -> tuple[bytes, dict]:
        auth = self.booking_auth(label, **kw)
        self.pay(auth)
        return auth["bookingId"], auth

    def cancel(self, auth: dict, key: str, *, signature: bytes | None = None):
        sig = self.sign_cancel(auth) if signature is None else signature
        return self.escrow_send("cancelBooking", [self.cancel_tuple(auth), sig], key)

    # -- logs ----------------------------------------------------------------------------
    def events(self, receipt, address: str | None = None) -> list[tuple[str, Any]]:
        """Decode a raw receipt's logs with eth_abi, using the DESIGN.md layouts."""
        out = []
        for log in receipt["logs"]:
            if address and to_checksum_address(log["address"]) != to_checksum_address(address):
                continue
            topics = [bytes(t) for t in log["topics"]]
            data = bytes(log["data"])
            topic0 = "0x" + topics[0].hex()
            for name, (design_topic, names, types) in DESIGN_EVENTS.items():
                if topic0 == design_topic:
                    assert len(topics) == 2, f"{name}: only bookingId is indexed"
                    values = dict(zip(names, abi_decode(types, data), strict=False))
                    for k, t in zip(names, types, strict=False):
                        if t == "address":
                            values[k] = to_checksum_address(values[k])
                    out.append((name, {"bookingId": topics[1], **values}))
                    break
            else:
                for name, (sig, indexed, plain) in ADMIN_EVENTS.items():
                    if topic0 == "0x" + keccak(text=sig).hex():
                        vals = [abi_decode([t], topic)[0] for t, topic in zip(indexed, topics[1:], strict=False)]
                        vals += list(abi_decode(plain, data))
                        vals = [to_checksum_address(v) if isinstance(v, str) else v for v in vals]
                        out.append((name, tuple(vals)))
                        break
                else:
                    out.append(("<unknown>", (topics, data)))
        return out

    def escrow_events(self, receipt) -> list[tuple[str, Any]]:
        return self.events(receipt, self.dep.escrow)


_KEYS = {a.address: a.private_key for a in (DEPLOYER, SIGNER, OPERATOR, FEE_RECIPIENT, *USER_ACCOUNTS)}


def _key_of(address: str) -> str:
    return _KEYS[to_checksum_address(address)]
