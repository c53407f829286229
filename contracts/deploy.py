"""Deploy MockUSDC + BookingEscrow and send locally signed transactions (web3.py 8, sync).

    w3 = Web3(Web3.HTTPProvider(url))
    dep = deploy_stack(w3, owner_key=DEPLOYER.private_key, signer_address=SIGNER.address,
                       operator_address=OPERATOR.address, fee_recipient_address=FEE_RECIPIENT.address)
    mint_usdc(w3, dep.usdc, customer, 1_000 * 10**6, DEPLOYER.private_key)

Transactions are signed with eth-account and sent raw; every helper waits for the receipt
and raises ``TransactionFailed`` when its status is not 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from web3 import Web3

from .artifacts import ESCROW_CONTRACT, USDC_CONTRACT, abi_type, escrow_abi, load_artifact, usdc_abi

GAS_MARGIN_NUM, GAS_MARGIN_DEN = 12, 10  # +20 % over eth_estimateGas
RECEIPT_TIMEOUT = 120


class TransactionFailed(RuntimeError):
    def __init__(self, message: str, receipt: Any = None) -> None:
        super().__init__(message)
        self.receipt = receipt


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    usdc: str  # checksummed MockUSDC address
    escrow: str  # checksummed BookingEscrow address
    block_number: int  # block of the escrow deployment (scan start)
    escrow_tx_hash: str
    owner: str
    signer: str
    operator: str
    fee_recipient: str


def _fee_fields(w3: Web3) -> dict[str, int]:
    latest = w3.eth.get_block("latest")
    base_fee = latest.get("baseFeePerGas")
    if base_fee is None:
        return {"gasPrice": w3.eth.gas_price}
    priority = w3.eth.max_priority_fee
    return {"maxFeePerGas": 2 * base_fee + priority, "maxPriorityFeePerGas": priority}


def send_transaction(
    w3: Web3,
    sender_key: str | bytes,
    *,
    to: str | None = None,
    data: bytes | str = b"",
    value: int = 0,
    gas: int | None = None,
    timeout: float = RECEIPT_TIMEOUT,
) -> Any:
    """Sign ``{to, data, value}`` with ``sender_key``, send it raw, wait, return the receipt."""
    account = Account.from_key(sender_key)
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x"))
    tx: dict[str, Any] = {
        "from": account.address,
        "data": data,
        "value": value,
        "chainId": w3.eth.chain_id,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        **_fee_fields(w3),
    }
    if to is not None:
        tx["to"] = Web3.to_checksum_address(to)
    if gas is None:
        gas = w3.eth.estimate_gas(tx) * GAS_MARGIN_NUM // GAS_MARGIN_DEN
    tx["gas"] = gas
    del tx["from"]
    signed = Account.sign_transaction(tx, sender_key)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    if receipt["status"] != 1:
        raise TransactionFailed(f"transaction {tx_hash.to_0x_hex()} reverted", receipt)
    return receipt


def encode_call(abi: list[dict[str, Any]], fn_name: str, args: Sequence[Any]) -> bytes:
    """Calldata for ``fn_name(*args)``: 4-byte selector + eth_abi-encoded arguments.

    Struct arguments are passed as tuples in field order.
    """
    matches = [e for e in abi if e.get("type") == "function" and e["name"] == fn_name]
    matches = [e for e in matches if len(e["inputs"]) == len(args)]
    if len(matches) != 1:
        raise ValueError(f"no unique function {fn_name} with {len(args)} argument(s) in ABI")
    types = [abi_type(i) for i in matches[0]["inputs"]]
    selector = Web3.keccak(text=f"{fn_name}({','.join(types)})")[:4]
    return bytes(selector) + abi_encode(types, list(args))


def transact(
    w3: Web3, address: str, abi: list[dict[str, Any]], fn_name: str, args: Sequence[Any], sender_key: str | bytes
) -> Any:
    """Call a state-changing contract function from ``sender_key``; return the receipt."""
    return send_transaction(w3, sender_key, to=address, data=encode_call(abi, fn_name, args))


def deploy_contract(w3: Web3, name: str, args: Sequence[Any], sender_key: str | bytes) -> str:
    """Deploy the compiled contract ``name`` (contracts/build/<name>.json); return its address."""
    return _deploy(w3, name, args, sender_key)[0]


def _deploy(w3: Web3, name: str, args: Sequence[Any], sender_key: str | bytes) -> tuple[str, Any]:
    artifact = load_artifact(name)
    ctor = next((e for e in artifact["abi"] if e.get("type") == "constructor"), None)
    types = [abi_type(i) for i in ctor["inputs"]] if ctor else []
    if len(types) != len(args):
        raise ValueError(f"{name} constructor takes {len(types)} argument(s), got {len(args)}")
    data = bytes.fromhex(artifact["bytecode"].removeprefix("0x")) + abi_encode(types, list(args))
    receipt = send_transaction(w3, sender_key, data=data)
    address = receipt["contractAddress"]
    if not address:
        raise TransactionFailed(f"{name} deployment produced no contract address", receipt)
    return Web3.to_checksum_address(address), receipt


def deploy_stack(
    w3: Web3,
    *,
    owner_key: str | bytes,
    signer_address: str,
    operator_address: str,
    fee_recipient_address: str,
) -> Deployment:
    """Deploy MockUSDC and BookingEscrow (owned by the ``owner_key`` account)."""
    owner = Account.from_key(owner_key).address
    usdc = deploy_contract(w3, USDC_CONTRACT, [], owner_key)
    signer = Web3.to_checksum_address(signer_address)
    operator = Web3.to_checksum_address(operator_address)
    fee_recipient = Web3.to_checksum_address(fee_recipient_address)
    escrow, receipt = _deploy(
        w3, ESCROW_CONTRACT, [usdc, owner, signer, operator, fee_recipient], owner_key
    )
    return Deployment(
        chain_id=w3.eth.chain_id,
        usdc=usdc,
        escrow=escrow,
        block_number=receipt["blockNumber"],
        escrow_tx_hash=receipt["transactionHash"].to_0x_hex(),
        owner=owner,
        signer=signer,
        operator=operator,
        fee_recipient=fee_recipient,
    )


def mint_usdc(w3: Web3, usdc: str, to: str, amount: int, sender_key: str | bytes) -> Any:
    """Mint ``amount`` MockUSDC base units to ``to`` (anyone may mint the mock)."""
    return transact(w3, usdc, usdc_abi(), "mint", [Web3.to_checksum_address(to), amount], sender_key)


def approve_usdc(w3: Web3, usdc: str, spender: str, amount: int, owner_key: str | bytes) -> Any:
    """ERC-20 approve from the ``owner_key`` account."""
    return transact(w3, usdc, usdc_abi(), "approve", [Web3.to_checksum_address(spender), amount], owner_key)


def usdc_balance(w3: Web3, usdc: str, account: str) -> int:
    data = encode_call(usdc_abi(), "balanceOf", [Web3.to_checksum_address(account)])
    return int.from_bytes(w3.eth.call({"to": usdc, "data": data}), "big")


__all__ = [
    "Deployment",
    "TransactionFailed",
    "approve_usdc",
    "deploy_contract",
    "deploy_stack",
    "encode_call",
    "escrow_abi",
    "mint_usdc",
    "send_transaction",
    "transact",
    "usdc_balance",
]
