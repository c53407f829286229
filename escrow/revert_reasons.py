"""Why a transaction reverted: the escrow contract's custom error, decoded from the ABI.

A receipt says only `status: 0x0`; the reason is in the revert data, which a node hands out
only for a call. So the transaction is replayed with `eth_call` (its sender, target, value,
input and gas) on the state at the end of its block, with that block's timestamp, and the data
is decoded against BookingEscrow's (and MockUSDC's) ABI by `contracts.artifacts.decode_revert`
(eth_abi). Replayed at the end of its block, a revert caused by what the block did before it
(a nonce an earlier transaction used, a booking it paid) shows again; one caused by state a
LATER transaction of the same block changed may not: then the reason is unknown (`error` None).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from eth_abi.exceptions import DecodingError
from web3 import Web3

from chain_events.rpc import RpcClient, RpcResponseError
from common.eth import checksum
from contracts.artifacts import ERROR_SELECTORS, decode_revert, escrow_abi

# The two errors Solidity defines itself (require strings, panics), with their argument names.
_BUILTIN_ERRORS = {"0x08c379a0": ("Error", ["string"], ["message"]), "0x4e487b71": ("Panic", ["uint256"], ["code"])}


@dataclass(frozen=True)
class RevertReason:
    """`error`: the custom error's name (`NonceAlreadyUsed`, `AuthorizationExpired`, ..., or
    Solidity's `Error`/`Panic`); None when the data is not one the ABI knows, or the replay did
    not revert. `args`: its arguments by name, integers as decimal strings (uint256 exceeds
    JSON's safe integers), addresses checksummed, bytes as 0x hex. `data`: the raw revert data."""

    error: str | None
    args: dict[str, object] = field(default_factory=dict)
    data: str = ""
    # The escrow function called and the booking id it names (bookingId, or auth.bookingId), if any.
    function: str | None = None
    chain_booking_id: str | None = None

    @property
    def text(self) -> str:
        """`NonceAlreadyUsed(nonce=7)`, for history notes and logs."""
        if self.error is None:
            return f"unknown revert reason (data {self.data or 'none'})"
        return f"{self.error}({', '.join(f'{name}={value}' for name, value in self.args.items())})"

    def as_dict(self) -> dict:
        return {"error": self.error, "args": dict(self.args), "data": self.data, "function": self.function}


def decode_revert_data(data: str | None) -> RevertReason:
    """The contract error `data` (0x hex) encodes; `error` None when the ABI does not know it."""
    data = (data or "").lower()
    decoded = decode_revert(data) if data.startswith("0x") else None
    if decoded is None:
        return RevertReason(error=None, data=data)
    name, values = decoded
    _, types, names = _BUILTIN_ERRORS.get(data[:10]) or ERROR_SELECTORS[data[:10]]
    return RevertReason(
        error=name,
        args={arg: _json_value(abi_type, value) for arg, abi_type, value in zip(names, types, values, strict=True)},
        data=data,
    )


def replay_revert_reason(client: RpcClient, transaction: dict, block_number: int) -> RevertReason:
    """Replay the reverted `transaction` (eth_getTransactionByHash's answer, a call to the escrow)
    at the end of `block_number` and decode why it reverts, and which escrow function and
    booking it called. RPC failures propagate (chain_events.rpc.RpcError)."""
    function, chain_booking_id = called_function(transaction.get("input") or transaction.get("data") or "0x")
    reason = _replay(client, transaction, block_number)
    return RevertReason(
        error=reason.error, args=reason.args, data=reason.data, function=function, chain_booking_id=chain_booking_id
    )


def called_function(calldata: str) -> tuple[str | None, str | None]:
    """(escrow function name, the booking id it names as 0x hex) of `calldata`; Nones where the
    ABI does not decode it or the function names no booking."""
    try:
        function, params = _escrow().decode_function_input(calldata)
    except (ValueError, DecodingError):
        return None, None
    booking_id = params.get("bookingId")
    if booking_id is None and isinstance(params.get("auth"), dict):
        booking_id = params["auth"].get("bookingId")
    return function.fn_name, ("0x" + booking_id.hex()) if isinstance(booking_id, bytes) else None


@functools.cache
def _escrow():
    return Web3().eth.contract(abi=escrow_abi())


def _replay(client: RpcClient, transaction: dict, block_number: int) -> RevertReason:
    call = {
        "from": transaction["from"],
        "to": transaction["to"],
        "data": transaction.get("input") or transaction.get("data") or "0x",
        "value": transaction.get("value") or "0x0",
        "gas": transaction["gas"],
    }
    answer = client.batch([("eth_call", [call, hex(block_number)])], allow_errors=True)[0]
    if not isinstance(answer, RpcResponseError):
        return RevertReason(error=None)  # the replay went through: the revert is not reproducible
    data = answer.data.get("data") if isinstance(answer.data, dict) else answer.data
    if not isinstance(data, str):
        # A node that answers a revert without its data (or with an error that is not a revert):
        # nothing to decode, say what it said.
        return RevertReason(error=None, data="")
    return decode_revert_data(data)


def _json_value(abi_type: str, value):
    if abi_type == "address":
        return checksum(value)
    if abi_type.startswith(("uint", "int")):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value
