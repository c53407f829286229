"""The shape of each JSON-RPC method's answer, checked in `RpcClient.batch` as every answer arrives:
a node answering well-formed nonsense (a broken load balancer, a proxy's error page wrapped as a
result) is failed over from there, whichever caller then parses the answer. Callers check only
what needs their context (a hash we hold, a chain id we expect).

Written by hand: web3.py's formatters convert answers but do not refuse them, and a dozen small
checks read more plainly than a schema for JSON-RPC. Each raises ValueError, which `batch` treats
as an inconsistent answer.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")  # leading zeros tolerated: some providers send them
_DATA = re.compile(r"0x([0-9a-fA-F]{2})*\Z")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")


@dataclass(frozen=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: int


def quantity(value) -> int:
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise ValueError(f"not a quantity: {value!r:.80}")
    return int(value, 16)


def block_hash(value) -> str:
    """A 32-byte hash, lower case."""
    if not isinstance(value, str) or not _HASH.match(value):
        raise ValueError(f"not a 32-byte hash: {value!r:.80}")
    return value.lower()


def _data(value) -> str:
    if not isinstance(value, str) or not _DATA.match(value):
        raise ValueError(f"not hex data: {value!r:.80}")
    return value


def _address(value) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise ValueError(f"not an address: {value!r:.80}")
    return value


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object: {value!r:.80}")
    return value


def parse_header(raw) -> BlockHeader:
    """A block object from eth_getBlockByNumber/Hash → BlockHeader; ValueError if malformed."""
    raw = _object(raw, "block")
    return BlockHeader(
        number=quantity(raw.get("number")),
        hash=block_hash(raw.get("hash")),
        parent_hash=block_hash(raw.get("parentHash")),
        timestamp=quantity(raw.get("timestamp")),
    )


def _log(raw) -> None:
    raw = _object(raw, "log")
    _address(raw.get("address"))
    topics = raw.get("topics")
    if not isinstance(topics, list):
        raise ValueError("log topics are not a list")
    for topic in topics:
        block_hash(topic)
    _data(raw.get("data"))
    quantity(raw.get("blockNumber"))
    block_hash(raw.get("blockHash"))
    block_hash(raw.get("transactionHash"))
    quantity(raw.get("logIndex"))


def _logs(result, params) -> None:
    if not isinstance(result, list):
        raise ValueError(f"logs are not a list: {result!r:.80}")
    for raw in result:
        _log(raw)


def _block(result, params) -> None:
    """null is the node's answer for a block it does not have (above its head, a tag it lacks),
    never for its latest block."""
    if result is None:
        if params and params[0] == "latest":
            raise ValueError("no latest block")
        return
    header = parse_header(result)
    asked = params[0] if params else None
    if isinstance(asked, str) and _QUANTITY.match(asked) and header.number != int(asked, 16):
        raise ValueError(f"block {header.number} is not the one asked ({asked})")
    if isinstance(asked, str) and _HASH.match(asked) and header.hash != asked.lower():
        raise ValueError(f"block {header.hash} is not the one asked ({asked})")


def _receipt(result, params) -> None:
    """null: not mined (or not known to the node)."""
    if result is None:
        return
    receipt = _object(result, "receipt")
    if block_hash(receipt.get("transactionHash")) != str(params[0]).lower():
        raise ValueError(f"receipt of {receipt.get('transactionHash')} is not the one asked ({params[0]})")
    quantity(receipt.get("blockNumber"))
    block_hash(receipt.get("blockHash"))
    if receipt.get("status") is not None:  # receipts of the pre-Byzantium kind carry `root` instead
        quantity(receipt["status"])
    quantity(receipt.get("gasUsed"))
    if receipt.get("effectiveGasPrice") is not None:
        quantity(receipt["effectiveGasPrice"])
    logs = receipt.get("logs")
    if not isinstance(logs, list):
        raise ValueError("receipt logs are not a list")
    for raw in logs:
        _log(raw)


def _transaction(result, params) -> None:
    """null: the node has never seen it. blockNumber is null while it waits in the pool."""
    if result is None:
        return
    transaction = _object(result, "transaction")
    if block_hash(transaction.get("hash")) != str(params[0]).lower():
        raise ValueError(f"transaction {transaction.get('hash')} is not the one asked ({params[0]})")
    if transaction.get("blockNumber") is not None:
        quantity(transaction["blockNumber"])
    _address(transaction.get("from"))
    quantity(transaction.get("nonce"))
    _data(transaction.get("input"))


def _fee_history(result, params) -> None:
    history = _object(result, "fee history")
    base_fees = history.get("baseFeePerGas")
    if not isinstance(base_fees, list) or not base_fees:
        raise ValueError("fee history without base fees")
    for fee in base_fees:
        quantity(fee)
    rewards = history.get("reward") or []
    if not isinstance(rewards, list) or not all(isinstance(r, list) for r in rewards):
        raise ValueError("fee history rewards are not lists")
    for per_block in rewards:
        for reward in per_block:
            quantity(reward)


def _quantity_answer(result, params) -> None:
    quantity(result)


def _data_answer(result, params) -> None:
    _data(result)


def _code_answer(result, params) -> None:
    if result != "0x0":  # some nodes' answer for an account without code
        _data(result)


def _hash_answer(result, params) -> None:
    block_hash(result)


_CHECKS: dict[str, Callable[[object, list], None]] = {
    "eth_blockNumber": _quantity_answer,
    "eth_chainId": _quantity_answer,
    "eth_estimateGas": _quantity_answer,
    "eth_gasPrice": _quantity_answer,
    "eth_getBalance": _quantity_answer,
    "eth_getTransactionCount": _quantity_answer,
    "eth_maxPriorityFeePerGas": _quantity_answer,
    "eth_call": _data_answer,
    "eth_getCode": _code_answer,
    "eth_sendRawTransaction": _hash_answer,
    "eth_getBlockByNumber": _block,
    "eth_getBlockByHash": _block,
    "eth_getTransactionReceipt": _receipt,
    "eth_getTransactionByHash": _transaction,
    "eth_getLogs": _logs,
    "eth_feeHistory": _fee_history,
}


def check_answer(method: str, params: list, result) -> None:
    """ValueError naming what is wrong when `result` is not an answer `method` can give to `params`.
    Methods not listed (anvil's own) are not checked."""
    check = _CHECKS.get(method)
    if check is not None:
        try:
            check(result, params)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"{method}: malformed answer ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:
            raise ValueError(f"{method}: {exc}") from None
