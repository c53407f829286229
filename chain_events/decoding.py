"""Raw logs (eth_getLogs / receipt shape) → DecodedLog, decoded with eth_abi.

Speed matters (catch-up decodes every log of the contract's history), so:
- the element decoders of static layouts (BookingCreatedAndPaid, ServiceCompleted) are looked
  up once and run over one stream; dynamic layouts (BookingCancelled's `reason`) use the
  codec's tuple decoder, which validates the head pointers;
- the stored JSON of address/uint-only layouts is filled into a template rather than
  json.dumps'd value by value;
- addresses come back lower-case from a registry whose address decoder skips eth_utils'
  normalisation (the bytes are already the address; checksumming is left to where an
  address is shown or used as a key, see `checksum`);
- the indexed `bookingId` (bytes32) is its topic as-is: an indexed static value's topic is
  its 32-byte ABI encoding, so decoding would return the same bytes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from eth_abi import decoding as abi_decoding
from eth_abi.base import parse_type_str
from eth_abi.codec import ABICodec
from eth_abi.registry import BaseEquals
from eth_abi.registry import registry as default_registry

from contracts.artifacts import EVENT_ABIS, EVENT_TOPICS, abi_type

from .metrics import UNDECODABLE_LOGS

log = logging.getLogger(__name__)

BOOKING_CREATED_AND_PAID = "BookingCreatedAndPaid"
SERVICE_COMPLETED = "ServiceCompleted"
BOOKING_CANCELLED = "BookingCancelled"
BOOKING_EVENTS = (BOOKING_CREATED_AND_PAID, SERVICE_COMPLETED, BOOKING_CANCELLED)



class LogDecodeError(ValueError):
    """A log carries one of our event topics but does not fit the ABI (wrong build/contract)."""


class _LowerHexAddressDecoder(abi_decoding.AddressDecoder):
    decoder_fn = staticmethod(lambda data: "0x" + data.hex())

    @parse_type_str("address")
    def from_type_str(cls, abi_type_, registry):
        return cls()


def _fast_registry():
    registry = default_registry.copy()
    registry.unregister_decoder("address")
    registry.register_decoder(BaseEquals("address"), _LowerHexAddressDecoder, label="address")
    return registry


_REGISTRY = _fast_registry()
_CODEC = ABICodec(_REGISTRY)


@dataclass(frozen=True)
class _Layout:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    decoders: tuple
    dynamic: bool
    data_size: int  # exact byte length for static layouts
    # %-template of args_json() for address/uint-only layouts (hex and decimal digits need no escaping).
    json_template: str | None


def _layout(name: str) -> _Layout:
    inputs = EVENT_ABIS[name]["inputs"]
    indexed = [i for i in inputs if i["indexed"]]
    if [i["name"] for i in indexed] != ["bookingId"] or indexed[0]["type"] != "bytes32":
        raise LogDecodeError(f"{name}: expected exactly one indexed bytes32 bookingId in the ABI")
    plain = [i for i in inputs if not i["indexed"]]
    names = tuple(i["name"] for i in plain)
    types = tuple(abi_type(i) for i in plain)
    decoders = tuple(_REGISTRY.get_decoder(t) for t in types)
    dynamic = any(getattr(d, "is_dynamic", False) for d in decoders)
    json_template = None
    if not dynamic and all(t == "address" or t.startswith("uint") for t in types):
        json_template = "{" + ",".join(
            f'"{n}":"%s"' for n in ("bookingId", *names)
        ) + "}"
    return _Layout(name, names, types, decoders, dynamic, 32 * len(types), json_template)


_LAYOUTS: dict[str, _Layout] = {
    EVENT_TOPICS[name].lower(): _layout(name) for name in BOOKING_EVENTS
}

#: topic0 filter for eth_getLogs: any of our three booking events.
BOOKING_EVENT_TOPICS: list[str] = [EVENT_TOPICS[name].lower() for name in BOOKING_EVENTS]


@dataclass(slots=True)
class DecodedLog:
    chain_booking_id: str
    event_name: str
    block_number: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int
    args: dict  # python values: int for uint256, lower-case hex for addresses, str for strings
    _json: str | None = field(default=None, repr=False)
    _json_template: str | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash, self.log_index)

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)

    def args_json(self) -> str:
        """The args as stored: uint256 as decimal strings (JSON numbers would lose precision)."""
        if self._json is None and self._json_template is not None:
            # Same text as json.dumps below, without its per-value dispatch (catch-up hot path).
            self._json = self._json_template % (self.chain_booking_id, *self.args.values())
        if self._json is None:
            self._json = json.dumps(
                {"bookingId": self.chain_booking_id}
                | {k: (str(v) if type(v) is int else v) for k, v in self.args.items()},
                separators=(",", ":"),
            )
        return self._json


def decode_log(raw: dict, *, contract_address: str) -> DecodedLog | None:
    """Decode one raw log; None when it is not one of our booking events from our contract."""
    if raw["address"].lower() != contract_address:
        return None
    topics = raw["topics"]
    if not topics:
        return None
    layout = _LAYOUTS.get(topics[0].lower())
    if layout is None:
        return None
    if len(topics) != 2:
        raise LogDecodeError(f"{layout.name} log with {len(topics)} topics (expected 2)")
    try:
        data = bytes.fromhex(raw["data"][2:])
    except ValueError as exc:
        raise LogDecodeError(f"{layout.name}: log data is not hex: {exc}") from exc
    values = _decode_with_eth_abi(layout, data)
    return DecodedLog(
        chain_booking_id=topics[1].lower(),
        event_name=layout.name,
        block_number=int(raw["blockNumber"], 16),
        block_hash=raw["blockHash"].lower(),
        tx_hash=raw["transactionHash"].lower(),
        tx_index=int(raw["transactionIndex"], 16),
        log_index=int(raw["logIndex"], 16),
        args=dict(zip(layout.names, values, strict=False)),
        _json_template=layout.json_template,
    )


def _decode_with_eth_abi(layout: _Layout, data: bytes) -> list:
    try:
        if layout.dynamic:
            values = _CODEC.decode(layout.types, data)
        else:
            if len(data) != layout.data_size:
                raise LogDecodeError(f"{layout.name} log data is {len(data)} bytes, expected {layout.data_size}")
            stream = abi_decoding.ContextFramesBytesIO(data)
            values = [decoder(stream) for decoder in layout.decoders]
    except LogDecodeError:
        raise
    except Exception as exc:  # eth_abi raises several decoding error types
        raise LogDecodeError(f"{layout.name}: {type(exc).__name__}: {exc}") from exc
    return values


def decode_logs(raws: list[dict], *, contract_address: str) -> list[DecodedLog]:
    """Our booking events among `raws` (a log answer, a receipt's logs), in chain order, once each.

    A log with one of our topics that does not fit the ABI (a contract built from other
    sources than ours) cannot be applied by any retry: it is logged as an error, counted in
    bookme_chain_undecodable_logs_total (alert ChainLogUndecodable) and skipped."""
    out = []
    seen = set()
    for raw in raws:
        try:
            decoded = decode_log(raw, contract_address=contract_address)
        except LogDecodeError as exc:
            log.error("undecodable escrow log in tx %s: %s", raw.get("transactionHash"), exc)
            UNDECODABLE_LOGS.inc()
            continue
        if decoded is not None and decoded.key not in seen:
            seen.add(decoded.key)
            out.append(decoded)
    out.sort(key=lambda d: d.position)
    return out




_UINT_ARGS = {
    layout.name: frozenset(n for n, t in zip(layout.names, layout.types, strict=False) if t.startswith("uint"))
    for layout in _LAYOUTS.values()
}


def log_from_stored(
    *, chain_booking_id, event_name, block_number, block_hash, tx_hash, tx_index, log_index, args: dict
) -> DecodedLog:
    """A stored event row back into a DecodedLog (uint256 strings back to int)."""
    uints = _UINT_ARGS[event_name]
    values = {k: (int(v) if k in uints else v) for k, v in args.items() if k != "bookingId"}
    return DecodedLog(
        chain_booking_id=chain_booking_id,
        event_name=event_name,
        block_number=block_number,
        block_hash=block_hash,
        tx_hash=tx_hash,
        tx_index=tx_index,
        log_index=log_index,
        args=values,
    )
