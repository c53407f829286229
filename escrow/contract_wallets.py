"""Smart-contract wallets (EIP-1271): asking a wallet contract on chain whether a signature is its own.

A contract has no private key, so ecrecover never yields its address. EIP-1271 lets the
contract answer instead: `isValidSignature(bytes32 hash, bytes signature)` returns the magic
value 0x1626ba7e for a signature it accepts (anything else, or a revert, means no).

Cost: callers ask only after ecrecover did not give the address, and only an address with
code is asked (one eth_getCode, then one eth_call with a bounded gas limit). An externally
owned account's right signature costs no RPC call; a wrong one costs one.

Not supported: ERC-6492 signatures of wallets not deployed yet (counterfactual wallets, whose
signature wraps a factory call); such a wallet is accepted once it is deployed.
"""
from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_utils import keccak

from chain_events.rpc import RpcClient, RpcResponseError, get_rpc_client

MAGIC_VALUE = bytes.fromhex("1626ba7e")
_IS_VALID_SIGNATURE = keccak(text="isValidSignature(bytes32,bytes)")[:4]  # the magic value itself
# Gas the wallet's check may use in our eth_call: room for a passkey (P-256) check written in
# Solidity, and a bound on what any contract can make the node compute for one sign-in.
CALL_GAS = 1_000_000


def is_contract(address: str, *, client: RpcClient | None = None) -> bool:
    """The address holds code at the latest block (a contract, or an EIP-7702 delegated account)."""
    code = (client or get_rpc_client()).call("eth_getCode", [address, "latest"])
    return isinstance(code, str) and code not in ("0x", "0x0")


def accepts_signature(address: str, digest: bytes, signature: bytes, *, client: RpcClient | None = None) -> bool:
    """The contract at `address` answers `isValidSignature(digest, signature)` with the magic value.

    A revert (no such function, a wallet that refuses by reverting) is a no. An unreachable
    node raises chain_events.rpc.RpcError: the answer is unknown, not no.
    """
    data = _IS_VALID_SIGNATURE + abi_encode(["bytes32", "bytes"], [digest, signature])
    call = {"to": address, "data": "0x" + data.hex(), "gas": hex(CALL_GAS)}
    try:
        answer = (client or get_rpc_client()).call("eth_call", [call, "latest"])
    except RpcResponseError:
        return False
    if not isinstance(answer, str) or len(answer) < 2 + 64:
        return False
    # A bytes4 return value is one ABI word: the four bytes, then zeros.
    return answer[2:66].lower() == MAGIC_VALUE.hex() + "0" * 56
