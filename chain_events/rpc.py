"""JSON-RPC access to the chain: several endpoints, timeouts, retry with backoff, failover.

`RpcClient.call` and `RpcClient.batch` speak raw JSON-RPC over HTTP (requests with pooled
connections). Transport failures and garbage answers (not JSON, wrong id, neither result nor
error) count against the endpoint and move the call to the next one; an endpoint that failed
is cooled down for a while so the healthy ones are preferred. A JSON-RPC error object is the
node's answer, not a transport fault: it is raised as `RpcResponseError` without failover,
except for errors that mean "this node is behind or overloaded" (see `_FAILOVER_CODES`).
"""
from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from prometheus_client import Counter

from .answers import BlockHeader, check_answer, parse_header

log = logging.getLogger(__name__)

RPC_ERRORS = Counter("bookme_rpc_errors_total", "RPC calls that failed, by endpoint and kind", ["endpoint", "kind"])
RPC_CALLS = Counter("bookme_rpc_requests_total", "HTTP round trips to RPC endpoints", ["endpoint"])

# JSON-RPC error codes that mean the node cannot answer now (rate limit, resource limits,
# unknown block on a lagging node); another endpoint may.
_FAILOVER_CODES = {-32005, -32603, 429}
_FAILOVER_MESSAGES = (
    "header not found", "unknown block", "rate limit", "too many requests", "service unavailable",
    # Infura's -32005 "project ID request rate exceeded" (the same code also means "too many
    # results", so the wording decides): a rate limit, not a reason to shrink a log range.
    "rate exceeded",
)


class RpcError(Exception):
    """Base of every RPC failure."""

    def __init__(self, message: str, *, endpoint: str | None = None, code: int | None = None, data=None):
        super().__init__(message)
        self.endpoint = endpoint
        self.code = code
        self.data = data


class RpcTransportError(RpcError):
    """The endpoint did not give a usable JSON-RPC answer (down, timeout, garbage)."""


class RpcResponseError(RpcError):
    """The node answered with a JSON-RPC error object."""


class RpcInconsistentAnswer(RpcTransportError):
    """Valid JSON-RPC whose content is wrong or disagrees with what we already know."""


class RpcAnswerTooLarge(RpcError):
    """The answer's body is larger than the caller allowed; it was not read (or parsed) past
    the limit. A property of the request (e.g. a log range), not of the endpoint: every node
    would answer the same, so nothing fails over. `size` is the body's declared length, or
    the bytes received before giving up (then the body is at least that long)."""

    def __init__(self, message: str, *, size: int, **kwargs):
        super().__init__(message, **kwargs)
        self.size = size


class RpcUnavailable(RpcError):
    """Every endpoint failed, after the retries."""

    @property
    def timed_out(self) -> bool:
        """The last failure was a timeout (the request may simply be too heavy)."""
        return "timeout" in str(self.__cause__ or "").lower()


def _read_capped(response: requests.Response, limit: int, endpoint: str) -> bytes:
    """The body of a streamed answer, refused (RpcAnswerTooLarge) once it is over `limit`
    bytes: at once when its Content-Length says so, else as soon as that many arrived."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RpcAnswerTooLarge(
            f"answer of {int(declared)} bytes is over the {limit}-byte limit", size=int(declared), endpoint=endpoint
        )
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=1 << 16):
        size += len(chunk)
        if size > limit:
            raise RpcAnswerTooLarge(
                f"answer of more than {limit} bytes (limit)", size=size, endpoint=endpoint
            )
        chunks.append(chunk)
    return b"".join(chunks)


def redact_url(url: str) -> str:
    """Endpoint label for logs and metrics: scheme://host[:port] only (paths often hold API keys)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


@dataclass
class EndpointHealth:
    url: str
    label: str
    consecutive_failures: int = 0
    total_failures: int = 0
    total_calls: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    last_ok_at: float | None = None
    cooldown_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        return {
            "endpoint": self.label,
            "healthy": self.cooldown_until <= time.monotonic(),
            "consecutive_failures": self.consecutive_failures,
            "total_failures": self.total_failures,
            "total_calls": self.total_calls,
            "last_error": self.last_error,
        }


class RpcClient:
    def __init__(
        self,
        urls: list[str],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.25,
        cooldown: float = 15.0,
        session: requests.Session | None = None,
    ):
        if not urls:
            raise ValueError("at least one RPC URL is required")
        # Two endpoints on one host (other paths, other keys) must not share a label: it names
        # the endpoint in metrics, health and report_inconsistent. The second is "<host> #2".
        bases = [redact_url(url) for url in urls]
        self.endpoints = [
            EndpointHealth(url=url, label=base if i == bases.index(base) else f"{base} #{bases[:i].count(base) + 1}")
            for i, (url, base) in enumerate(zip(urls, bases, strict=False))
        ]
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.cooldown = cooldown
        # One client serves every thread of a process (Celery's thread pool, the scanner's
        # prefetch and apply lanes): a requests.Session per thread (Session is not documented
        # as thread-safe), counters and endpoint health under locks.
        self._given_session = session
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._counter_lock = threading.Lock()
        self.round_trips = 0

    @property
    def session(self) -> requests.Session:
        if self._given_session is not None:
            return self._given_session
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        return session

    # -- public API -----------------------------------------------------------------------
    def call(self, method: str, params: list | None = None):
        return self.batch([(method, params or [])])[0]

    def batch(
        self,
        calls: list[tuple[str, list]],
        *,
        allow_errors: bool = False,
        validate=None,
        optional: frozenset = frozenset(),
        max_answer_bytes: int | None = None,
        answered_by: list[str] | None = None,
    ) -> list:
        """Run several calls in one HTTP round trip; results in the same order.

        With allow_errors, a call's JSON-RPC error is returned in its place as an
        RpcResponseError instead of raised, so one bad call does not spoil the rest.

        Every result is checked for its method's shape (`answers.check_answer`: a receipt for
        the hash asked, a block of the number asked, quantities that are quantities), then the
        caller's `validate(results)` checks what needs its context and may raise
        `RpcInconsistentAnswer` (or ValueError/TypeError/KeyError from parsing): a block hash
        that disagrees with what we hold, a lagging node. A result failing either is well-formed
        JSON-RPC but wrong: that endpoint is treated like a failed one and the next is asked.

        `optional` holds indexes of calls whose error is an acceptable answer (e.g. the
        `finalized` tag on a node that lacks it) and never a reason to fail over.

        With `max_answer_bytes`, a larger answer raises RpcAnswerTooLarge before it is read
        whole or parsed (a node without a result cap can answer a log range with hundreds
        of MB).

        `answered_by`, if given, gets the label of the endpoint whose answer is returned (for
        `report_inconsistent`, when the caller finds the answer wrong only later).
        """
        if not calls:
            return []
        last_exc: Exception | None = None
        for attempt in range(self.retries + 1):
            for endpoint in self._ordered_endpoints():
                try:
                    results = self._post(endpoint, calls, max_answer_bytes)
                except RpcTransportError as exc:
                    self._mark_failed(endpoint, exc, "transport")
                    last_exc = exc
                    continue
                failover = [
                    r
                    for i, r in enumerate(results)
                    if i not in optional and isinstance(r, RpcResponseError) and _should_fail_over(r)
                ]
                if failover:
                    self._mark_failed(endpoint, failover[0], "node")
                    last_exc = failover[0]
                    continue
                if not allow_errors:
                    for r in results:
                        if isinstance(r, RpcResponseError):
                            self._mark_ok(endpoint)
                            raise r
                try:
                    for (method, params), result in zip(calls, results, strict=True):
                        if not isinstance(result, RpcResponseError):
                            check_answer(method, params, result)
                    if validate is not None:
                        validate(results)
                except (RpcInconsistentAnswer, ValueError, TypeError, KeyError, AttributeError) as exc:
                    bad = exc if isinstance(exc, RpcInconsistentAnswer) else RpcInconsistentAnswer(
                        f"unusable answer: {type(exc).__name__}: {exc}", endpoint=endpoint.label
                    )
                    bad.endpoint = endpoint.label
                    self._mark_failed(endpoint, bad, "inconsistent")
                    last_exc = bad
                    continue
                self._mark_ok(endpoint)
                if answered_by is not None:
                    answered_by.append(endpoint.label)
                return results
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise RpcUnavailable(f"all RPC endpoints failed: {last_exc}") from last_exc

    def health(self) -> list[dict]:
        return [e.as_dict() for e in self.endpoints]

    def report_inconsistent(self, label: str, exc: Exception) -> None:
        """An answer of endpoint `label` that `batch` accepted turned out wrong (checked against
        the database, e.g. logs it left out): that endpoint cools down like one whose answer
        failed validation, so the next calls ask the others first."""
        for endpoint in self.endpoints:
            if endpoint.label == label:
                self._mark_failed(endpoint, exc, "inconsistent")

    # -- internals ------------------------------------------------------------------------
    def _ordered_endpoints(self) -> list[EndpointHealth]:
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.cooldown_until <= now]
        cooling = sorted((e for e in self.endpoints if e.cooldown_until > now), key=lambda e: e.cooldown_until)
        return healthy + cooling  # try everything rather than fail while all are cooling down

    def _post(
        self, endpoint: EndpointHealth, calls: list[tuple[str, list]], max_answer_bytes: int | None = None,
    ) -> list:
        ids = [next(self._ids) for _ in calls]
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in zip(ids, calls, strict=False)]
        body = payload[0] if len(payload) == 1 else payload
        with endpoint.lock:
            endpoint.total_calls += 1
        with self._counter_lock:
            self.round_trips += 1
        RPC_CALLS.labels(endpoint.label).inc()
        try:
            response = self.session.post(
                endpoint.url, json=body, timeout=self.timeout, stream=max_answer_bytes is not None
            )
            with response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise RpcTransportError(f"HTTP {response.status_code}", endpoint=endpoint.label)
                if max_answer_bytes is None:
                    content = response.content
                else:
                    content = _read_capped(response, max_answer_bytes, endpoint.label)
        except requests.RequestException as exc:
            raise RpcTransportError(f"{type(exc).__name__}", endpoint=endpoint.label) from exc
        try:
            data = json.loads(content)
        except ValueError:
            raise RpcTransportError("answer is not JSON", endpoint=endpoint.label) from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise RpcTransportError("answer is not a JSON-RPC response", endpoint=endpoint.label)
        by_id = {}
        for item in data:
            if isinstance(item, dict) and "id" in item:
                by_id[item["id"]] = item
        results = []
        for request_id, (method, _params) in zip(ids, calls, strict=False):
            item = by_id.get(request_id)
            if item is None:
                raise RpcTransportError(f"no answer for {method}", endpoint=endpoint.label)
            if "error" in item and item["error"] is not None:
                err = item["error"]
                if not isinstance(err, dict):
                    raise RpcTransportError("malformed error object", endpoint=endpoint.label)
                results.append(
                    RpcResponseError(
                        str(err.get("message", "")), endpoint=endpoint.label, code=err.get("code"), data=err.get("data")
                    )
                )
            elif "result" in item:
                results.append(item["result"])
            else:
                raise RpcTransportError(f"neither result nor error for {method}", endpoint=endpoint.label)
        return results

    def _mark_failed(self, endpoint: EndpointHealth, exc: Exception, kind: str) -> None:
        with endpoint.lock:
            endpoint.consecutive_failures += 1
            endpoint.total_failures += 1
            endpoint.last_error = str(exc)[:300]
            endpoint.last_error_at = time.time()
            endpoint.cooldown_until = time.monotonic() + min(
                self.cooldown * (2 ** (endpoint.consecutive_failures - 1)), 300
            )
        RPC_ERRORS.labels(endpoint.label, kind).inc()
        log.warning("RPC endpoint %s failed (%s): %s", endpoint.label, kind, str(exc)[:200])

    def _mark_ok(self, endpoint: EndpointHealth) -> None:
        with endpoint.lock:
            recovered = endpoint.consecutive_failures > 0
            endpoint.consecutive_failures = 0
            endpoint.cooldown_until = 0.0
            endpoint.last_ok_at = time.time()
        if recovered:
            log.info("RPC endpoint %s recovered", endpoint.label)


def _should_fail_over(error: RpcResponseError) -> bool:
    message = str(error).lower()
    return error.code in _FAILOVER_CODES and any(m in message for m in _FAILOVER_MESSAGES) or any(
        m in message for m in _FAILOVER_MESSAGES[:2]
    )


def avoid_endpoint_of(client: RpcClient, exc: Exception) -> None:
    """An answer `batch` accepted that the database then showed wrong (logs an incomplete
    eth_getLogs left out, see chain_events.ingest): its endpoint cools down, so the next pass
    asks the others instead of being refused by the same node beat after beat."""
    if isinstance(exc, RpcInconsistentAnswer) and exc.endpoint:
        client.report_inconsistent(exc.endpoint, exc)


_client_lock = threading.Lock()
_clients: dict[tuple, RpcClient] = {}


def get_rpc_client() -> RpcClient:
    """The process's client for the configured endpoints (rebuilt if the settings change, e.g. in tests)."""
    from django.conf import settings

    options = {
        "timeout": settings.RPC_TIMEOUT_SECONDS,
        "retries": getattr(settings, "RPC_RETRIES", 2),
        "backoff": getattr(settings, "RPC_BACKOFF_SECONDS", 0.25),
        "cooldown": getattr(settings, "RPC_COOLDOWN_SECONDS", 15.0),
    }
    key = (tuple(settings.CHAIN_RPC_URLS), tuple(sorted(options.items())))
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            client = RpcClient(list(settings.CHAIN_RPC_URLS), **options)
            _clients.clear()
            _clients[key] = client
        return client


# -- chain reading helpers used by the scanner and the fast path ---------------------------
# Plain functions over an RpcClient: every answer was checked for its method's shape in
# `RpcClient.batch`; what they check is what needs their context.

@dataclass(frozen=True)
class ChainTip:
    latest: BlockHeader
    finalized: BlockHeader | None  # None: the node has no `finalized` tag
    at_cursor: BlockHeader | None  # the canonical header at the number asked for (None if not asked)


def get_chain_tip(client: RpcClient, cursor_block: int | None) -> ChainTip:
    """Head, finalized head and the canonical header at `cursor_block`, in one round trip.

    A node whose head is below `cursor_block` is behind us (a lagging backend of a load-balanced
    URL, a fallback still syncing): its answer is refused as inconsistent, so the call fails
    over. Read as "the chain got shorter", it would roll back events that are still canonical.
    A reorg to a shorter chain is then seen once the chain is past the cursor again (by the
    hash at the cursor), a few blocks later."""
    calls = [("eth_getBlockByNumber", ["latest", False]), ("eth_getBlockByNumber", ["finalized", False])]
    if cursor_block is not None:
        calls.append(("eth_getBlockByNumber", [hex(cursor_block), False]))

    parsed: dict = {}

    def validate(results):
        latest = parse_header(results[0])
        finalized = None
        if not isinstance(results[1], RpcResponseError) and results[1] is not None:
            finalized = parse_header(results[1])
            if finalized.number > latest.number:
                raise RpcInconsistentAnswer("finalized block above the head")
        at_cursor = None
        if cursor_block is not None:
            if latest.number < cursor_block:
                raise RpcInconsistentAnswer(f"node is behind: its head {latest.number} is below block {cursor_block}")
            if isinstance(results[2], RpcResponseError) or results[2] is None:
                raise RpcInconsistentAnswer(f"node has no block {cursor_block} below its head: {results[2]}")
            at_cursor = parse_header(results[2])
        parsed["tip"] = ChainTip(latest=latest, finalized=finalized, at_cursor=at_cursor)

    # allow_errors: a node without the `finalized` tag answers that call with an error.
    client.batch(calls, allow_errors=True, validate=validate, optional=frozenset({1}))
    return parsed["tip"]


def get_headers(client: RpcClient, numbers: list[int]) -> dict[int, BlockHeader]:
    """Canonical headers of `numbers` (one batch); RpcInconsistentAnswer if any is missing."""
    if not numbers:
        return {}
    parsed: dict[int, BlockHeader] = {}

    def validate(results):
        parsed.clear()
        for number, raw in zip(numbers, results, strict=False):
            if raw is None:
                raise RpcInconsistentAnswer(f"node has no block {number}")
            parsed[number] = parse_header(raw)

    client.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers], validate=validate)
    return parsed


class LogRangeTooLarge(RpcError):
    """The node refused an eth_getLogs range (too many results, range too wide, timeout).

    `suggested_to` is the end block of a range the provider named as workable, if it did.
    """

    def __init__(self, message: str, *, suggested_to: int | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.suggested_to = suggested_to


_RANGE_HINT = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*,\s*(0x[0-9a-fA-F]+)\s*\]")
_RANGE_ERROR_WORDS = (
    "more than", "too many", "limit", "exceed", "range", "too large", "too wide", "timeout", "timed out",
    "response size", "query returned",
)


def suggested_range(message: str) -> tuple[int, int] | None:
    """`Try with this block range [0x1, 0x2]` (Infura/Alchemy style) → (1, 2)."""
    match = _RANGE_HINT.search(message or "")
    if not match:
        return None
    start, end = int(match.group(1), 16), int(match.group(2), 16)
    return (start, end) if end >= start else None


def get_logs_checked(
    client: RpcClient,
    *,
    address: str,
    topics: list,
    from_block: int,
    to_block: int,
    held_hashes: dict[int, str],
    max_answer_bytes: int | None = None,
) -> tuple[list[dict], BlockHeader, str]:
    """eth_getLogs for [from_block, to_block] plus the header of `to_block`, in ONE batch:
    the logs, the header and the label of the endpoint that answered.

    Asking both in one HTTP request makes one node answer both: if it returns the header we
    hold for `to_block` (`held_hashes`, the unfinalized window we fetched), it has every block
    of the range on our chain, so its log answer is complete. Every log must lie in the range,
    must not be `removed`, and where we hold a block's hash the log's block hash must match.
    Anything else is an inconsistent answer (next endpoint). A refused range raises
    LogRangeTooLarge, and so does an answer over `max_answer_bytes` for a range of more than
    one block (a single block cannot be split further): it is dropped unparsed, and the
    suggested range is sized for a quarter of the limit from the size seen.
    """
    params = {"fromBlock": hex(from_block), "toBlock": hex(to_block), "address": address, "topics": topics}
    calls = [("eth_getLogs", [params]), ("eth_getBlockByNumber", [hex(to_block), False])]
    parsed: dict = {}

    def validate(results):
        logs, raw_header = results
        if isinstance(logs, RpcResponseError):
            return  # handled below (range errors are the node's answer, not a fault)
        if raw_header is None or isinstance(raw_header, RpcResponseError):
            raise RpcInconsistentAnswer(f"node has no block {to_block}")
        header = parse_header(raw_header)
        held = held_hashes.get(to_block)
        if held is not None and held != header.hash:
            raise RpcInconsistentAnswer(f"block {to_block} hash differs from the header we hold")
        for log_ in logs:
            number = int(log_["blockNumber"], 16)
            if not from_block <= number <= to_block:
                raise RpcInconsistentAnswer(f"log from block {number} outside [{from_block}, {to_block}]")
            if log_.get("removed"):
                raise RpcInconsistentAnswer("log marked removed")
            expected = header.hash if number == to_block else held_hashes.get(number)
            if expected is not None and log_["blockHash"].lower() != expected:
                raise RpcInconsistentAnswer(f"log block hash for {number} differs from the header")
        parsed["header"] = header

    cap = max_answer_bytes if to_block > from_block else None
    answered_by: list[str] = []
    try:
        logs, _ = client.batch(
            calls, allow_errors=True, validate=validate, max_answer_bytes=cap, answered_by=answered_by
        )
    except RpcAnswerTooLarge as exc:
        span = to_block - from_block + 1
        raise LogRangeTooLarge(
            f"eth_getLogs {from_block}-{to_block}: {exc}",
            suggested_to=from_block + max(1, span * (cap // 4) // max(exc.size, 1)) - 1,
            endpoint=exc.endpoint,
        ) from None
    if isinstance(logs, RpcResponseError):
        message = str(logs)
        hint = suggested_range(message)
        lowered = message.lower()
        if (hint or any(word in lowered for word in _RANGE_ERROR_WORDS)) and to_block > from_block:
            raise LogRangeTooLarge(message, suggested_to=hint[1] if hint else None, code=logs.code)
        # A single block cannot be split: its refusal is the node's failure, raised to the
        # caller (the scan pass ends and the next beat tries again) instead of asked again at once.
        raise logs
    return logs, parsed["header"], answered_by[0]


def get_receipt(client: RpcClient, tx_hash: str) -> dict | None:
    """The transaction receipt, or None while it is not mined (or not known to the node)."""
    return client.call("eth_getTransactionReceipt", [tx_hash])


def get_transaction_counts(client: RpcClient, addresses, tags: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """eth_getTransactionCount of each address at each tag ("latest", "pending", a block number),
    keyed (address, tag), in one round trip with the head's header.

    A count is a bare quantity, and nonsense ("0xdeadbeef" from a broken balancer) looks like
    one: taken as a nonce it would send at a nonce the chain never reaches and wedge the account.
    The node answering the counts must answer a header that checks in the same batch, or the
    next endpoint is asked."""
    keys = [(address, tag) for address in sorted(set(addresses)) for tag in tags]
    if not keys:
        return {}
    calls = [HEAD_HEADER_CALL]
    calls += [("eth_getTransactionCount", [address, tag]) for address, tag in keys]
    answers = client.batch(calls)
    return {key: int(count, 16) for key, count in zip(keys, answers[1:], strict=True)}


#: The head's header: its number is the head block. Asked rather than eth_blockNumber, a bare
#: quantity nonsense can pass for (a head billions of blocks ahead would count any block confirmed).
HEAD_HEADER_CALL = ("eth_getBlockByNumber", ["latest", False])


def get_head_number(client: RpcClient) -> int:
    return int(client.call(*HEAD_HEADER_CALL)["number"], 16)
