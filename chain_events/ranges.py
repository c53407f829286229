"""Block ranges for the scanner: how large the next one is, and fetching it ahead of time.

A range is fetched as eth_getLogs together with the header of its last block in ONE batch
(chain_events.rpc.get_logs_checked), plus the headers of its unfinalized blocks, checked to
chain onto the cursor's block; then decoded. `Prefetcher` does that for the next range in a
background thread while the current one is written to the database. Its size follows the
density of the logs seen (`next_range_size`); a range the provider refuses shrinks it (`shrink`).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings

from . import metrics
from .cursor import IndexedContract
from .decoding import BOOKING_EVENT_TOPICS, DecodedLog, decode_logs
from .models import SyncCursor
from .reports import ScanReport
from .rpc import (
    BlockHeader,
    LogRangeTooLarge,
    RpcInconsistentAnswer,
    RpcUnavailable,
    get_headers,
    get_logs_checked,
)

log = logging.getLogger(__name__)

#: First range of a cursor that never scanned (see scanner._scan_ranges): one block, so even a
#: node without a result cap answers a dense chain's probe with one block's logs, not thousands.
PROBE_BLOCKS = 1
#: Most a range may grow in one step (a sparse stretch says little about what follows).
MAX_GROWTH = 4


class ReorgDetected(Exception):
    """The range's first block does not build on the cursor's block."""


# -- sizing ------------------------------------------------------------------------------------
def _target_results() -> int:
    """Logs per range to aim for: a quarter of the provider cap. It leaves room for denser
    stretches (a refused or oversized range costs a whole round trip) and bounds memory:
    during a catch-up up to three ranges are alive at once (two in the apply lanes, the next
    one being fetched, see scanner._scan_ranges); benchmarks/bench_catchup.py's ranges (one
    block, 2,000 logs) leave the scanner's resident memory within ~40 MiB of where it started."""
    return max(1, settings.CHAIN_LOG_MAX_RESULTS // 4)


def next_range_size(size: int, span: int, results: int, range_ceiling: int | None) -> int:
    """The range after one of `span` blocks that returned `results` logs.

    Proportional to the density seen (aiming at _target_results), growing at most
    MAX_GROWTH-fold a step (2-fold once a range was refused this run), never past
    CHAIN_LOG_RANGE_MAX nor the smallest range refused this run; a short range (the head
    was near) shrinks the size only when it was dense.
    """
    if range_ceiling is None:
        limit, growth = settings.CHAIN_LOG_RANGE_MAX, MAX_GROWTH
    else:
        # Refused this run: creep back up slowly, staying below the smallest refused range.
        limit, growth = range_ceiling - 1, 2
    target = _target_results()
    wanted = span * target // results if results else span * growth
    wanted = max(1, min(wanted, span * growth, limit))
    if span < size and wanted < size and results <= target:
        return size  # a short range (head reached) below the target says nothing against the size
    return wanted


def smaller_range_size(from_block: int, to_block: int, suggested_to: int | None) -> int:
    """After [from_block, to_block] was refused: the provider's suggested range when it names
    one inside it, otherwise half (at least one block)."""
    if suggested_to is not None and from_block <= suggested_to < to_block:
        return suggested_to - from_block + 1
    return max(1, (to_block - from_block + 1) // 2)


def shrink(cursor: SyncCursor, from_block: int, to_block: int, suggested_to: int | None, report: ScanReport) -> None:
    """A refused range: take the provider's suggestion when it names one, otherwise halve."""
    span = to_block - from_block + 1
    report.range_ceiling = span if report.range_ceiling is None else min(report.range_ceiling, span)
    cursor.range_size = smaller_range_size(from_block, to_block, suggested_to)
    SyncCursor.objects.filter(pk=cursor.pk).update(range_size=cursor.range_size)
    report.range_shrinks += 1
    metrics.RANGE_SHRINKS.inc()
    log.info("eth_getLogs range %d-%d refused; range now %d blocks", from_block, to_block, cursor.range_size)


# -- headers -----------------------------------------------------------------------------------
def _window_headers(client, parent_hash: str, from_block: int, to_block: int, final: int) -> dict[int, BlockHeader]:
    """Headers of the range's unfinalized blocks (batched), checked to chain onto `parent_hash`
    (the cursor's block hash)."""
    first = max(from_block, final + 1)
    if first > to_block:
        return {}
    headers = _headers_in_batches(client, list(range(first, to_block + 1)))
    previous = parent_hash if first == from_block else None
    for number in range(first, to_block + 1):
        header = headers[number]
        if previous and header.parent_hash != previous:
            if number == from_block:
                raise ReorgDetected(f"block {number} does not build on the cursor's block")
            # Headers of one answer that do not chain: a node switching forks mid-batch.
            raise RpcUnavailable("headers of the range do not chain") from RpcInconsistentAnswer("fork mid-batch")
        previous = header.hash
    return headers


def _headers_in_batches(client, numbers: list[int]) -> dict[int, BlockHeader]:
    headers: dict[int, BlockHeader] = {}
    batch = settings.CHAIN_HEADER_BATCH
    for start in range(0, len(numbers), batch):
        headers.update(get_headers(client, numbers[start:start + batch]))
    return headers


class CanonicalHashes:
    """Canonical block hashes for ingest's check of stale rows: those of the headers the
    caller already fetched, the others asked from the node (batched) when a stale row needs
    them. Rare: only rows stored ahead of the scanner (fast path, replay) that an answer
    lacks, in blocks whose header the caller does not hold (already final, or replayed)."""

    def __init__(self, client, known: dict[int, str] | None = None):
        self._client, self._known = client, dict(known or {})

    def of(self, numbers) -> dict[int, str]:
        numbers = set(numbers)
        missing = sorted(numbers - self._known.keys())
        if missing:
            self._known.update({n: h.hash for n, h in _headers_in_batches(self._client, missing).items()})
        return {n: self._known[n] for n in numbers}


# -- fetching ----------------------------------------------------------------------------------
@dataclass
class FetchedRange:
    from_block: int
    to_block: int
    headers: dict[int, BlockHeader]
    last_header: BlockHeader
    logs: list[DecodedLog]
    next_size: int  # range size to continue with (from the density of this range)
    seconds: float  # spent fetching and decoding
    canonical: CanonicalHashes  # the headers above, the last one, and the node for others
    answered_by: str  # the endpoint whose eth_getLogs answer `logs` are


def _fetch_range(
    client, contract: IndexedContract, parent_hash: str, from_block: int, to_block: int, final: int,
    ceiling: int | None, *, size: int,
) -> FetchedRange:
    """Headers of the range's unfinalized blocks, its logs (checked against the header of its
    last block) and their decoding. No database access (runs in the prefetch thread)."""
    started = time.perf_counter()
    headers = _window_headers(client, parent_hash, from_block, to_block, final)
    raw_logs, last_header, answered_by = get_logs_checked(
        client,
        address=contract.contract,
        topics=[BOOKING_EVENT_TOPICS],
        from_block=from_block,
        to_block=to_block,
        held_hashes={n: h.hash for n, h in headers.items()},
        max_answer_bytes=settings.CHAIN_LOG_MAX_ANSWER_BYTES,
    )
    max_results = settings.CHAIN_LOG_MAX_RESULTS
    span = to_block - from_block + 1
    results = len(raw_logs)
    if results > max_results and to_block > from_block:
        del raw_logs  # not kept alive by the exception's traceback
        # More than a provider would hand out: fetch it again in smaller pieces (also bounds
        # memory), sized for the density just seen.
        raise LogRangeTooLarge(
            f"{results} logs in {from_block}-{to_block}",
            suggested_to=from_block + max(1, span * _target_results() // results) - 1,
        )
    logs = decode_logs(raw_logs, contract_address=contract.contract)
    del raw_logs
    for decoded in logs:
        decoded.args_json()  # cached on the log: rendered here, in the prefetch thread, not while storing
    next_size = next_range_size(size, span, results, ceiling)
    known = {n: h.hash for n, h in headers.items()} | {last_header.number: last_header.hash}
    canonical = CanonicalHashes(client, known)
    return FetchedRange(
        from_block, to_block, headers, last_header, logs, next_size, time.perf_counter() - started, canonical,
        answered_by,
    )


class Prefetcher:
    """Fetches (eth_getLogs + headers) and decodes the next range in a background thread while
    the current one is written to the database: the node's and PostgreSQL's time overlap.

    The thread touches no database and no Django state: it only runs `_fetch_range`. A
    prefetched range is used only if it is exactly the range the loop asks for next, with
    the cursor hash it was checked against; its errors (range refused, reorg, RPC failure)
    surface when it is taken, where the loop handles them as for a range fetched in line.
    """

    def __init__(self, client, contract: IndexedContract, final: int):
        self.client, self.contract, self.final = client, contract, final
        self._executor = None
        self._pending = None  # ((parent_hash, from_block, to_block), Future)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._drop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        return False

    def _drop(self) -> None:
        if self._pending is not None:
            _, future = self._pending
            self._pending = None
            if not future.cancel():
                future.exception()  # wait: one range is fetched at a time (and its memory freed)

    def start(self, parent_hash: str, from_block: int, to_block: int, size: int, report: ScanReport) -> None:
        self._drop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-prefetch")
        ceiling = report.range_ceiling
        future = self._executor.submit(
            _fetch_range, self.client, self.contract, parent_hash, from_block, to_block, self.final, ceiling, size=size
        )
        self._pending = ((parent_hash, from_block, to_block), future)

    def take(self, cursor: SyncCursor, from_block: int, to_block: int, report: ScanReport) -> FetchedRange:
        pending, self._pending = self._pending, None
        if pending is not None:
            key, future = pending
            if key == (cursor.last_block_hash, from_block, to_block):
                return future.result()
            if not future.cancel():
                future.exception()
        return _fetch_range(
            self.client, self.contract, cursor.last_block_hash, from_block, to_block, self.final,
            report.range_ceiling, size=cursor.range_size,
        )
