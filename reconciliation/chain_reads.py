"""What reconciliation and the operator actions read from the chain, batched: the contract's view
of bookings (getBookings), a booking's logs (eth_getLogs on its indexed bookingId), the confirmed
block they are compared at, and the contract's paused() flag.

Pure reads: nothing here writes to the database or the cache (the cached pause flag the
console, health and metrics show is reconciliation.selectors.contract_paused).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from chain_events.decoding import BOOKING_EVENT_TOPICS
from chain_events.rpc import RpcClient, RpcInconsistentAnswer, RpcResponseError, get_head_number, get_rpc_client
from escrow.chain_state import ChainStatus

from .transactions import escrow_call

# BookingEscrow.Status enum (its ordinal in getBookings' answer) → the chain status names.
CHAIN_STATUS_NAMES = {0: ChainStatus.NONE, 1: ChainStatus.PAID, 2: ChainStatus.COMPLETED, 3: ChainStatus.CANCELLED}
_GET_BOOKINGS_SELECTOR = escrow_call("getBookings", [])[:4]
_PAUSED_CALLDATA = "0x" + escrow_call("paused").hex()
_VIEW_WORDS = 8  # BookingView: 8 static 32-byte words


@dataclass(frozen=True, slots=True)
class ChainBooking:
    chain_booking_id: str
    status: str  # a ChainStatus
    customer: str
    provider: str
    inviter: str
    amount: int
    platform_fee_rate: int
    inviter_fee_rate: int
    paid_at: int


def confirmed_block(client: RpcClient) -> int:
    """The newest block CHAIN_CONFIRMATIONS deep: what reconciliation and the rebuild compare against."""
    return max(get_head_number(client) - settings.CHAIN_CONFIRMATIONS, 0)


def decode_booking_views(result: str, chain_booking_ids: list[str]) -> list[ChainBooking]:
    """getBookings' return data (a dynamic array of static BookingView tuples) → ChainBooking list.

    The layout is fixed (offset, length, then 8 words per view), so it is sliced directly:
    10,000 views decode in milliseconds, where a generic ABI decode takes most of a second.
    """
    data = bytes.fromhex(result[2:] if result.startswith("0x") else result)
    if len(data) < 64 or int.from_bytes(data[:32], "big") != 32:
        raise RpcInconsistentAnswer("getBookings answer is not an array")
    count = int.from_bytes(data[32:64], "big")
    if count != len(chain_booking_ids) or len(data) != 64 + count * _VIEW_WORDS * 32:
        raise RpcInconsistentAnswer(f"getBookings returned {count} views for {len(chain_booking_ids)} ids")
    out = []
    for i, chain_booking_id in enumerate(chain_booking_ids):
        base = 64 + i * _VIEW_WORDS * 32
        w = [data[base + 32 * k: base + 32 * (k + 1)] for k in range(_VIEW_WORDS)]
        status = int.from_bytes(w[7], "big")
        if status not in CHAIN_STATUS_NAMES:
            raise RpcInconsistentAnswer(f"unknown booking status {status}")
        out.append(ChainBooking(
            chain_booking_id=chain_booking_id,
            status=CHAIN_STATUS_NAMES[status],
            customer="0x" + w[0][12:].hex(),
            provider="0x" + w[1][12:].hex(),
            inviter="0x" + w[2][12:].hex(),
            amount=int.from_bytes(w[3], "big"),
            platform_fee_rate=int.from_bytes(w[4], "big"),
            inviter_fee_rate=int.from_bytes(w[5], "big"),
            paid_at=int.from_bytes(w[6], "big"),
        ))
    return out


def _get_bookings_call(ids: list[str], block) -> tuple[str, list]:
    # getBookings(bytes32[]): selector, offset 32, length, the ids.
    body = (32).to_bytes(32, "big") + len(ids).to_bytes(32, "big") + b"".join(bytes.fromhex(i[2:]) for i in ids)
    data = "0x" + (_GET_BOOKINGS_SELECTOR + body).hex()
    block_tag = hex(block) if isinstance(block, int) else block
    return "eth_call", [{"to": settings.ESCROW_CONTRACT_ADDRESS, "data": data}, block_tag]


def read_chain_bookings(
    chain_booking_ids: list[str], *, block="latest", client: RpcClient | None = None
) -> dict[str, ChainBooking]:
    """The contract's view of these booking ids at `block`: RECONCILE_BATCH_SIZE ids per
    getBookings eth_call, RECONCILE_CALLS_PER_REQUEST calls per JSON-RPC batch (one round trip)."""
    client = client or get_rpc_client()
    size = settings.RECONCILE_BATCH_SIZE
    chunks = [chain_booking_ids[i: i + size] for i in range(0, len(chain_booking_ids), size)]
    out: dict[str, ChainBooking] = {}
    per_request = settings.RECONCILE_CALLS_PER_REQUEST
    for start in range(0, len(chunks), per_request):
        group = chunks[start: start + per_request]
        decoded: list[list[ChainBooking]] = []

        def validate(results, group=group, decoded=decoded):
            decoded.clear()
            decoded.extend(decode_booking_views(r, ids) for r, ids in zip(results, group, strict=True))

        client.batch([_get_bookings_call(ids, block) for ids in group], validate=validate)
        for views in decoded:
            for view in views:
                out[view.chain_booking_id] = view
    return out


def fetch_booking_logs(
    chain_booking_ids: list[str], *, to_block: int, from_block: int | None = None, client: RpcClient | None = None
) -> list[dict]:
    """Every booking event of these ids up to `to_block`: eth_getLogs filtered on the indexed
    bookingId topic (RECONCILE_LOG_TOPIC_BATCH ids OR-ed per filter), over block ranges of at
    most CHAIN_LOG_RANGE_MAX blocks, many filters per JSON-RPC batch. A range the node refuses
    is split in two and asked again."""
    client = client or get_rpc_client()
    from_block = settings.CHAIN_START_BLOCK if from_block is None else from_block
    escrow = settings.ESCROW_CONTRACT_ADDRESS.lower()
    width = settings.CHAIN_LOG_RANGE_MAX
    topic_batch = settings.RECONCILE_LOG_TOPIC_BATCH
    pending = [
        (chain_booking_ids[i: i + topic_batch], start, min(start + width - 1, to_block))
        for i in range(0, len(chain_booking_ids), topic_batch)
        for start in range(from_block, to_block + 1, width)
    ]
    logs: list[dict] = []
    while pending:
        group, pending = pending[: settings.RECONCILE_CALLS_PER_REQUEST], pending[settings.RECONCILE_CALLS_PER_REQUEST:]
        calls = [
            ("eth_getLogs", [{"address": settings.ESCROW_CONTRACT_ADDRESS, "fromBlock": hex(lo), "toBlock": hex(hi),
                              "topics": [BOOKING_EVENT_TOPICS, ids]}])
            for ids, lo, hi in group
        ]

        def validate(results, group=group):
            for result, (ids, lo, hi) in zip(results, group, strict=True):
                if isinstance(result, RpcResponseError):
                    continue
                wanted = set(ids)
                for entry in result:
                    if entry["address"].lower() != escrow or entry["topics"][1].lower() not in wanted:
                        raise RpcInconsistentAnswer("eth_getLogs returned a log outside the filter")
                    if not lo <= int(entry["blockNumber"], 16) <= hi or entry.get("removed"):
                        raise RpcInconsistentAnswer("eth_getLogs returned a log outside the range or removed")

        results = client.batch(calls, allow_errors=True, validate=validate)
        for result, (ids, lo, hi) in zip(results, group, strict=True):
            if isinstance(result, RpcResponseError):
                if hi > lo:  # too many results / range too wide: halve it
                    mid = (lo + hi) // 2
                    pending += [(ids, lo, mid), (ids, mid + 1, hi)]
                    continue
                if len(ids) > 1:
                    half = len(ids) // 2
                    pending += [(ids[:half], lo, hi), (ids[half:], lo, hi)]
                    continue
                raise result
            logs.extend(result)
    return logs


def read_contract_paused(client: RpcClient | None = None) -> bool:
    """The contract's paused() view at the latest block, read now. RpcError if unreachable."""
    client = client or get_rpc_client()
    result = client.call("eth_call", [{"to": settings.ESCROW_CONTRACT_ADDRESS, "data": _PAUSED_CALLDATA}, "latest"])
    return int(result, 16) != 0
