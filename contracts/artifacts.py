"""Compiled contract artifacts (contracts/build/*.json) and values derived from their ABIs.

The artifacts are produced by ``node contracts/compile.js`` (``npm run compile``) and are
committed; ``npm run check-build`` verifies they match the sources.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from eth_utils import keccak

BUILD_DIR = Path(__file__).resolve().parent / "build"

ESCROW_CONTRACT = "BookingEscrow"
USDC_CONTRACT = "MockUSDC"

#: EIP-712 domain of BookingEscrow (chainId and verifyingContract are per deployment).
EIP712_DOMAIN_NAME = "BookingEscrow"
EIP712_DOMAIN_VERSION = "1"

#: EIP-712 type strings, exactly as the contract hashes them.
BOOKING_AUTHORIZATION_TYPE = (
    "BookingAuthorization(bytes32 bookingId,address customer,address provider,address inviter,"
    "uint256 amount,uint256 platformFeeRate,uint256 inviterFeeRate,uint256 expiry,uint256 nonce)"
)
CANCELLATION_AUTHORIZATION_TYPE = (
    "CancellationAuthorization(bytes32 bookingId,uint256 customerAmount,uint256 providerAmount,"
    "uint256 platformAmount,uint256 inviterAmount,string reason,uint256 expiry,uint256 nonce)"
)

#: On-chain booking status enum (``BookingEscrow.Status``).
STATUS_NONE, STATUS_PAID, STATUS_COMPLETED, STATUS_CANCELLED = 0, 1, 2, 3
STATUS_NAMES = {0: "None", 1: "Paid", 2: "Completed", 3: "Cancelled"}


@functools.cache
def _load(name: str) -> dict[str, Any]:
    path = BUILD_DIR / f"{name}.json"
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing; run `npm run compile` (node contracts/compile.js)"
        ) from None


def load_artifact(name: str) -> dict[str, Any]:
    """Return the artifact ``{contractName, abi, bytecode, deployedBytecode, sourceHash, compiler}``.

    Cached; a deep copy is returned so callers cannot corrupt the cache.
    """
    return copy.deepcopy(_load(name))


def escrow_abi() -> list[dict[str, Any]]:
    return load_artifact(ESCROW_CONTRACT)["abi"]


def usdc_abi() -> list[dict[str, Any]]:
    return load_artifact(USDC_CONTRACT)["abi"]


def abi_type(param: dict[str, Any]) -> str:
    """Canonical ABI type of an ABI input/output entry (tuples expanded), e.g. ``(bytes32,address)[]``."""
    typ = param["type"]
    if typ.startswith("tuple"):
        inner = ",".join(abi_type(c) for c in param["components"])
        return f"({inner}){typ[len('tuple'):]}"
    return typ


def signature(entry: dict[str, Any]) -> str:
    """Canonical signature of an ABI function/event/error entry, e.g. ``Foo(uint256,address)``."""
    return f"{entry['name']}({','.join(abi_type(i) for i in entry.get('inputs', []))})"


def _entries(abi: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in abi if e.get("type") == kind}


def _event_topics() -> dict[str, str]:
    return {
        name: "0x" + keccak(text=signature(e)).hex()
        for name, e in sorted(_entries(escrow_abi(), "event").items())
    }


def _error_selectors(abi: list[dict[str, Any]]) -> dict[str, tuple[str, list[str], list[str]]]:
    out = {}
    for name, e in sorted(_entries(abi, "error").items()):
        selector = "0x" + keccak(text=signature(e)).hex()[:8]
        out[selector] = (name, [abi_type(i) for i in e["inputs"]], [i["name"] for i in e["inputs"]])
    return out


#: topic0 of every BookingEscrow event, keyed by event name (computed from the ABI).
EVENT_TOPICS: dict[str, str] = _event_topics()

#: ABI entry of every BookingEscrow event, keyed by event name.
EVENT_ABIS: dict[str, dict[str, Any]] = _entries(escrow_abi(), "event")

#: 4-byte selector (0x-hex) -> (error name, arg types, arg names) for BookingEscrow and
#: MockUSDC custom errors (includes the inherited OpenZeppelin errors).
ERROR_SELECTORS: dict[str, tuple[str, list[str], list[str]]] = {
    **_error_selectors(usdc_abi()),
    **_error_selectors(escrow_abi()),
}


def decode_revert(data: bytes | str | None) -> tuple[str, tuple[Any, ...]] | None:
    """Decode revert data into ``(error_name, args)``; ``None`` when it is not a known custom error.

    ``Error(string)`` and ``Panic(uint256)`` are decoded as ``("Error", (msg,))`` / ``("Panic", (code,))``.
    """
    from eth_abi import decode

    if data is None:
        return None
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x"))
    if len(data) < 4:
        return None
    selector, body = "0x" + data[:4].hex(), data[4:]
    builtin = {"0x08c379a0": ("Error", ["string"]), "0x4e487b71": ("Panic", ["uint256"])}
    if selector in builtin:
        name, types = builtin[selector]
    elif selector in ERROR_SELECTORS:
        name, types, _ = ERROR_SELECTORS[selector]
    else:
        return None
    return name, tuple(decode(types, body))
