"""The backend's transaction sender: the operator account's emergency cancels, completions, pauses.

    record = send_transaction(purpose=TxPurpose.PAUSE, data=calldata, actor="staff:alice", reason="incident")

Every send is a `SentTransaction` row written before anything is broadcast and updated at each
step, so the admin shows what was sent, under which nonce and hashes, at what fees, with what
outcome, and who asked for it and why.

- Fees (EIP-1559): `eth_feeHistory` over the last TX_FEE_HISTORY_BLOCKS blocks gives the next
  block's base fee and the median priority fee paid; maxFee = 2 × next base fee + priority
  (room for the base fee to rise ~6 full blocks), capped at TX_MAX_FEE_PER_GAS_WEI.
- Gas: `eth_estimateGas` + TX_GAS_MARGIN_PERCENT. A call that would revert is refused before
  any nonce is taken (status FAILED, the contract's error decoded), so nonces never get gaps.
- Nonces: an `OperatorNonce` row per (chain, account) is locked (SELECT ... FOR UPDATE) while a
  nonce is chosen, the transaction signed and broadcast; concurrent senders (threads, Celery
  workers, web processes) queue on that row and never take the same nonce. The nonce is the
  larger of the row's and the node's `eth_getTransactionCount(pending)`, except that a nonce
  the node names and none of our live or mined transactions holds is used again (a dropped
  transaction would otherwise leave a gap that blocks every later one). A "nonce too low"
  answer for a transaction the node already has is the lost answer of an earlier delivery of
  that same transaction, never a reason to send the call again under another nonce.
- Receipts are awaited (polling every hash ever broadcast for this nonce) by senders that ask
  to wait (console actions). A transaction not mined after TX_REPLACE_AFTER_SECONDS is
  replaced: same nonce, same call, both fee caps raised by TX_FEE_BUMP_PERCENT (≥ 12.5 %, what
  nodes demand of a replacement) or to the current market if that is higher, at most
  TX_MAX_REPLACEMENTS times.
- The settle job (`settle_transactions`, beat) never waits: it looks up, decides and sends.
  It records the outcome of every submitted transaction (and replaces those nobody waits on,
  e.g. auto-complete's, when they do not mine); re-checks mined ones whose block may still be
  reorged, and sends again at its nonce one whose block left the chain (or gives it up when
  the call would now fail); and brings each account's nonces in line with the chain: a nonce
  none of our transactions holds any more, with later ones of ours waiting behind it, is
  filled with a zero-value transfer to itself, and the next nonce follows the node's pending
  count. What it could not fix shows as bookme_operator_nonce_gap.
"""
from __future__ import annotations

import json
import logging
import math
import time
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Q
from django.utils import timezone
from eth_account import Account
from eth_utils import keccak
from prometheus_client import Counter

from chain_events.rpc import (
    RpcClient,
    RpcError,
    RpcResponseError,
    RpcUnavailable,
    get_chain_tip,
    get_rpc_client,
    get_transaction_counts,
)
from contracts.artifacts import decode_revert, escrow_abi
from contracts.deploy import encode_call

from .models import OperatorNonce, SentTransaction, TxPurpose, TxStatus

log = logging.getLogger(__name__)

BACKEND_TRANSACTIONS = Counter(
    "bookme_backend_transactions_total", "Transactions the backend sent, by purpose and outcome", ["purpose", "outcome"]
)
MIN_REPLACEMENT_BUMP_PERCENT = Decimal("12.5")
NONCE_FILL_ACTOR = "system:nonce-fill"
#: Statuses of a transaction that used its nonce on chain (as far as we last knew).
_ON_CHAIN = (TxStatus.MINED, TxStatus.REVERTED)
#: Mined transactions re-checked per JSON-RPC batch (their receipts and blocks: ~2 calls each;
#: providers cap a batch at about 100 calls).
_RECHECK_PER_BATCH = 40


class TransactionError(Exception):
    """A transaction could not be sent or did not succeed; `.record` is its SentTransaction row."""

    def __init__(self, message: str, record: SentTransaction | None = None):
        super().__init__(message)
        self.record = record


class TransactionRejected(TransactionError):
    """The node refused it before broadcast (estimateGas reverted, invalid transaction)."""


class TransactionReverted(TransactionError):
    """Mined, but the call reverted (receipt status 0)."""


class TransactionTimeout(TransactionError):
    """No receipt within TX_RECEIPT_TIMEOUT_SECONDS; the row stays SUBMITTED (see `refresh_transaction`)."""


# -- the operator account ---------------------------------------------------------------------
def operator_account():
    """eth_account LocalAccount of settings.OPERATOR_PRIVATE_KEY (the key itself is never logged)."""
    secret = settings.OPERATOR_PRIVATE_KEY
    if secret is None:
        raise TransactionError("OPERATOR_PRIVATE_KEY is not configured")
    return Account.from_key(secret.reveal())


def sending_account(address: str):
    """The configured key (operator, or the optional contract owner) that sends from `address`."""
    candidates = [settings.OPERATOR_PRIVATE_KEY, getattr(settings, "CONTRACT_OWNER_PRIVATE_KEY", None)]
    for secret in filter(None, candidates):
        account = Account.from_key(secret.reveal())
        if account.address.lower() == address.lower():
            return account
    raise TransactionError(f"no configured key sends from {address}")


def escrow_call(function_name: str, *args) -> bytes:
    """Calldata for a BookingEscrow function (eth_abi encoding of the ABI's types)."""
    return encode_call(escrow_abi(), function_name, list(args))


# -- fees and gas -------------------------------------------------------------------------------
def _percent_up(value: int, percent: int | Decimal) -> int:
    """`value` (wei, gas) raised by `percent`, rounded up, in exact arithmetic: a float product
    would lose wei above 2**53."""
    return math.ceil(Fraction(value) * (100 + Fraction(percent)) / 100)


def _fee_history_call() -> tuple[str, list]:
    return ("eth_feeHistory", [hex(settings.TX_FEE_HISTORY_BLOCKS), "latest", [50]])


def market_fees(fee_history: dict) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas) from an eth_feeHistory answer (rewardPercentiles [50])."""
    base_fees = [int(v, 16) for v in fee_history["baseFeePerGas"]]
    next_base_fee = base_fees[-1]  # the array ends with the base fee of the block after `newest`
    rewards = sorted(int(r[0], 16) for r in (fee_history.get("reward") or []) if r)
    median_reward = rewards[len(rewards) // 2] if rewards else 0
    priority = max(median_reward, settings.TX_MIN_PRIORITY_FEE_WEI)
    max_fee = min(2 * next_base_fee + priority, settings.TX_MAX_FEE_PER_GAS_WEI)
    return max_fee, min(priority, max_fee)


def _revert_message(error: RpcResponseError) -> str:
    data = error.data
    if isinstance(data, dict):
        data = data.get("data")
    decoded = decode_revert(data) if isinstance(data, str) and data.startswith("0x") else None
    if decoded:
        name, args = decoded
        return f"{name}({', '.join(str(a) for a in args)})"
    return str(error)


def _quote(client: RpcClient, sender: str, to: str, data: str) -> tuple[int, int, int]:
    """(gas limit, maxFeePerGas, maxPriorityFeePerGas) in one round trip; TransactionRejected on revert."""
    estimate, history = client.batch(
        [
            ("eth_estimateGas", [{"from": sender, "to": to, "data": data}]),
            _fee_history_call(),
        ],
        allow_errors=True,
    )
    if isinstance(estimate, RpcResponseError):
        raise TransactionRejected(f"the call would fail: {_revert_message(estimate)}")
    if isinstance(history, RpcResponseError):
        raise history
    gas = _percent_up(int(estimate, 16), settings.TX_GAS_MARGIN_PERCENT)
    max_fee, priority = market_fees(history)
    return gas, max_fee, priority


# -- sending ------------------------------------------------------------------------------------
def _sign(account, record: SentTransaction, nonce: int, max_fee: int, priority: int) -> tuple[str, str]:
    """(raw tx 0x hex, tx hash) of the record's call under this nonce and these fees."""
    signed = account.sign_transaction(
        {
            "type": 2,
            "chainId": record.chain_id,
            "nonce": nonce,
            "to": record.to_address,
            "value": 0,
            "data": record.data,
            "gas": record.gas_limit,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": priority,
        }
    )
    raw = "0x" + bytes(signed.raw_transaction).hex()
    return raw, "0x" + keccak(bytes(signed.raw_transaction)).hex()


def _error_says(error: Exception, *needles: str) -> bool:
    message = str(error).lower()
    return any(n in message for n in needles)


#: What nodes answer when a transaction's nonce is already used (mined).
_NONCE_USED = ("nonce too low", "nonce is too low", "already been used")


def _broadcast(client: RpcClient, raw: str) -> None:
    """eth_sendRawTransaction. The node already having this very transaction is fine: it says
    "already known" while pending, and "nonce too low" once it mined it, e.g. when an earlier
    delivery of the same request was taken and its answer lost (a timeout, a 502) and the RPC
    client's retry asked again. Sending the call again under another nonce would run it twice."""
    try:
        client.call("eth_sendRawTransaction", [raw])
    except RpcResponseError as exc:
        if _error_says(exc, "already known", "already imported", "known transaction"):
            return
        if _error_says(exc, *_NONCE_USED) and _node_has(client, "0x" + keccak(hexstr=raw).hex()):
            log.warning("broadcast answered %r, but the node has this transaction: its earlier delivery", str(exc))
            return
        raise


def _lock_nonce_row(chain_id: int, address: str) -> OperatorNonce:
    with connection.cursor() as cursor:  # create-if-missing without racing another creator
        cursor.execute(
            f"INSERT INTO {OperatorNonce._meta.db_table} (chain_id, address, next_nonce, nonce_gap, updated_at) "
            "VALUES (%s, %s, 0, 0, now()) ON CONFLICT (chain_id, address) DO NOTHING",
            [chain_id, address],
        )
    return OperatorNonce.objects.select_for_update().get(chain_id=chain_id, address=address)


def _choose_nonce(row: OperatorNonce, node_pending: int, record: SentTransaction) -> int:
    """The row's next nonce, unless the node's pending count names a nonce none of our
    transactions holds (sent and not given up, mined or reverted): a gap, e.g. a transaction
    dropped after later ones were sent. The node holds every later transaction back until that
    nonce is used, so it is filled first. A node that merely lags behind our own sends names a
    nonce we hold, and the row's is taken."""
    if row.next_nonce <= node_pending:
        return node_pending
    held = (
        SentTransaction.objects.filter(
            chain_id=row.chain_id, from_address=row.address, nonce=node_pending,
            status__in=[TxStatus.SUBMITTED, TxStatus.MINED, TxStatus.REVERTED],
        )
        .exclude(pk=record.pk)
        .exists()
    )
    if held:
        return row.next_nonce
    log.warning("operator nonce %d of %s is held by none of our transactions (row at %d): filling it",
                node_pending, row.address, row.next_nonce)
    return node_pending


def _node_has(client: RpcClient, tx_hash: str) -> bool:
    """The node knows this transaction (pending or mined)."""
    return client.call("eth_getTransactionByHash", [tx_hash]) is not None


def _submit(client: RpcClient, account, record: SentTransaction) -> None:
    """Take a nonce (row lock), sign, broadcast, and store it: all or nothing for the nonce row.

    The row lock is held across the broadcast, so the operator's transactions reach the node
    in nonce order and a refused one leaves no gap. The nonce and hash are written on their
    own connection before the broadcast (`_note_signed`): a sender that dies after the node
    took the transaction leaves a SUBMITTED row the settle job resolves from the receipt; one
    that dies before leaves the nonce row unmoved, so the next send takes that nonce and the
    settle job records this row's nonce as used by another transaction."""
    floor = 0  # after "nonce too low": never offer that nonce again, whatever a lagging node says
    hashes: list[str] = []  # every hash signed for this call (one might have been delivered)
    for attempt in range(2):
        with transaction.atomic():
            row = _lock_nonce_row(record.chain_id, record.from_address)
            node_pending = _pending_count(client, record.from_address)
            nonce = max(_choose_nonce(row, node_pending, record), floor)
            raw, tx_hash = _sign(account, record, nonce, record.max_fee_per_gas, record.max_priority_fee_per_gas)
            hashes.append(tx_hash)
            _note_signed(record, hashes, nonce=nonce, tx_hash=tx_hash)
            try:
                _broadcast(client, raw)
            except RpcResponseError as exc:
                if attempt == 0 and _error_says(exc, *_NONCE_USED):
                    floor = nonce + 1  # someone else used it: try the next one
                    row.next_nonce = max(row.next_nonce, floor)
                    row.save(update_fields=["next_nonce", "updated_at"])
                    continue
                raise TransactionRejected(f"the node refused the transaction: {exc}") from exc
            except RpcUnavailable:
                # Maybe delivered, maybe not: keep the nonce and the hash; the receipt wait
                # rebroadcasts the same signed transaction, which is harmless if it was delivered.
                log.warning("broadcast of %s unconfirmed (RPC unavailable); will rebroadcast", tx_hash)
            row.next_nonce = nonce + 1
            row.save(update_fields=["next_nonce", "updated_at"])
            record.nonce = nonce
            record.tx_hash = tx_hash
            record.tx_hashes = hashes
            record.status = TxStatus.SUBMITTED
            record.submitted_at = timezone.now()
            record.save(update_fields=["nonce", "tx_hash", "tx_hashes", "status", "submitted_at", "updated_at"])
            return


def _note_signed(record: SentTransaction, hashes: list[str], *, nonce: int | None = None,
                 tx_hash: str | None = None) -> None:
    """Store the hashes signed for `record` (and, for its first send, its nonce and hash, the
    row SUBMITTED) before the broadcast, committed at once on a connection of its own: the
    caller's transaction, which holds the nonce row, commits only after the broadcast, and a
    process that died in between would roll them back with it (the row would then read
    "never broadcast" for a call that ran on chain, or miss the hash that was mined). The
    caller writes the same values again."""
    sets, params = ["tx_hashes = %s::jsonb", "updated_at = now()"], [json.dumps(hashes)]
    if nonce is not None:
        sets += ["nonce = %s", "tx_hash = %s", "status = %s", "submitted_at = now()"]
        params += [nonce, tx_hash, TxStatus.SUBMITTED]
    side = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with side.cursor() as cursor:
            cursor.execute(
                f"UPDATE {SentTransaction._meta.db_table} SET {', '.join(sets)} WHERE id = %s", [*params, record.pk]
            )
    finally:
        side.close()


def _send_at_nonce(client: RpcClient, account, record: SentTransaction, nonce: int) -> None:
    """Sign the record's call (its gas and fees) under `nonce`, broadcast it and store the row
    SUBMITTED with the new hash added to its hashes. The caller holds the account's nonce row
    lock and chose the nonce. RpcResponseError: the node refused it (nothing stored but the
    hash); an unconfirmed delivery (RpcUnavailable) is stored as sent, like a first send."""
    raw, tx_hash = _sign(account, record, nonce, record.max_fee_per_gas, record.max_priority_fee_per_gas)
    hashes = [*(record.tx_hashes or []), tx_hash]
    _note_signed(record, hashes, nonce=nonce, tx_hash=tx_hash)
    try:
        _broadcast(client, raw)
    except RpcUnavailable:
        log.warning("broadcast of %s unconfirmed (RPC unavailable); the settle job follows it", tx_hash)
    record.nonce, record.tx_hash, record.tx_hashes = nonce, tx_hash, hashes
    record.status, record.submitted_at = TxStatus.SUBMITTED, timezone.now()
    _forget_block(record)
    record.save(update_fields=[
        "nonce", "tx_hash", "tx_hashes", "status", "submitted_at", "gas_limit", "max_fee_per_gas",
        "max_priority_fee_per_gas", "block_number", "block_hash", "gas_used", "effective_gas_price", "mined_at",
        "error", "updated_at",
    ])


def _forget_block(record: SentTransaction) -> None:
    record.block_number, record.block_hash, record.gas_used, record.effective_gas_price, record.mined_at = (
        None, "", None, None, None
    )


def send_transaction(
    *,
    purpose: str,
    data: bytes,
    actor: str,
    reason: str = "",
    to: str | None = None,
    booking=None,
    orphan=None,
    wait: bool = True,
    account=None,
) -> SentTransaction:
    """Send a call from the operator account (default target: the escrow contract).

    Returns the SentTransaction (MINED when waited for). Raises TransactionRejected (refused
    before broadcast), TransactionReverted, TransactionTimeout, or RpcError (RPC unavailable
    before anything was broadcast) — the row records the outcome in every case. `account`
    (an eth_account LocalAccount) defaults to the operator's.
    """
    account = account or operator_account()
    client = get_rpc_client()
    record = SentTransaction.objects.create(
        purpose=purpose,
        booking=booking,
        orphan=orphan,
        chain_id=settings.CHAIN_ID,
        from_address=account.address,
        to_address=to or settings.ESCROW_CONTRACT_ADDRESS,
        data="0x" + bytes(data).hex(),
        actor=actor[:200],
        reason=reason,
    )
    try:
        record.gas_limit, record.max_fee_per_gas, record.max_priority_fee_per_gas = _quote(
            client, record.from_address, record.to_address, record.data
        )
        record.save(update_fields=["gas_limit", "max_fee_per_gas", "max_priority_fee_per_gas", "updated_at"])
        _submit(client, account, record)
    except (TransactionError, RpcError) as exc:
        _fail(record, str(exc))
        if isinstance(exc, TransactionError):
            exc.record = record
        raise
    log.info("sent %s tx %s (nonce %s) for %s: %s", purpose, record.tx_hash, record.nonce, actor, reason[:200])
    if wait:
        wait_for_transaction(record, account=account)
    return record


def _fail(record: SentTransaction, error: str) -> None:
    record.status = TxStatus.FAILED
    record.error = error[:2000]
    record.save(update_fields=["status", "error", "updated_at"])
    BACKEND_TRANSACTIONS.labels(record.purpose, "failed").inc()
    log.error("%s transaction %s failed: %s", record.purpose, record.pk, error[:300])


# -- receipts and replacement ---------------------------------------------------------------------
def refresh_transaction(record: SentTransaction, client: RpcClient | None = None) -> bool:
    """Look for a receipt of any hash broadcast for this record; store the outcome. True if mined."""
    client = client or get_rpc_client()
    hashes = list(record.tx_hashes or [record.tx_hash])
    receipts = client.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
    for tx_hash, receipt in zip(hashes, receipts, strict=True):
        if receipt:
            _record_receipt(record, tx_hash, receipt)
            return True
    return False


def settle_transactions(*, client: RpcClient | None = None, now=None) -> dict[str, dict[str, int]]:
    """The settle job (beat, single-flight): mined transactions re-checked against the chain,
    submitted ones given their outcome, the accounts' nonces brought in line with the chain.
    Nothing here waits for a receipt: each step looks up, decides and, at most, broadcasts."""
    client = client or get_rpc_client()
    return {
        "reorged": recheck_mined_transactions(client=client),
        "submitted": settle_submitted_transactions(client=client, now=now),
        "nonces": reconcile_operator_nonces(client=client, now=now),
    }


def settle_submitted_transactions(*, client: RpcClient | None = None, now=None) -> dict[str, int]:
    """Every SUBMITTED row gets its outcome once it has one, whoever sent it (auto-complete
    sends without waiting; a waiter's receipt timeout or a killed worker leaves rows behind),
    so no row stays outstanding and the operator's nonces never stay blocked.

    - PREPARING longer than the receipt timeout: never broadcast (nonce not taken) → FAILED;
    - SUBMITTED: a receipt for any of its hashes → MINED or REVERTED. Older than the receipt
      timeout: the account's mined count passed its nonce with none of ours mined → FAILED (the
      nonce went to another transaction); the node knows none of its hashes and the nonce is
      still unused → FAILED (dropped from the pool; the nonce is used again). Otherwise it is
      pending: replaced with higher fees (as a waiter would) when it was last broadcast over
      TX_REPLACE_AFTER_SECONDS ago.
    """
    client = client or get_rpc_client()
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.TX_RECEIPT_TIMEOUT_SECONDS)
    # `updated_at` moves with every broadcast (`_note_signed`): the row was last sent before this.
    replace_before = now - timedelta(seconds=settings.TX_REPLACE_AFTER_SECONDS)
    settled = {"mined": 0, "failed": 0, "replaced": 0, "pending": 0}
    for record in SentTransaction.objects.filter(status=TxStatus.PREPARING, created_at__lt=stale_before):
        _fail(record, "never broadcast (the sending process stopped before it)")
        settled["failed"] += 1
    submitted = list(SentTransaction.objects.filter(status=TxStatus.SUBMITTED).order_by("from_address", "nonce"))
    # Read before any receipt: a transaction mined between the two reads then shows its receipt,
    # never passes for "nonce used by another".
    mined_counts = _mined_counts(client, {record.from_address for record in submitted})
    for record in submitted:
        # Decided under the account's nonce row lock, with the row read again: a waiter
        # replacing the transaction stores and broadcasts its new hash under that lock, so the
        # hashes seen here are every one that went out. Read outside it, a hash stored but not
        # yet broadcast would make a live replacement look dropped.
        with transaction.atomic():
            _lock_nonce_row(record.chain_id, record.from_address)
            record.refresh_from_db()
            if record.status != TxStatus.SUBMITTED:
                continue  # its waiter recorded the outcome meanwhile
            if refresh_transaction(record, client):
                settled["mined"] += 1
                continue
            if (record.submitted_at or record.created_at) < stale_before:
                if mined_counts[record.from_address] > record.nonce:
                    _fail(record, "its nonce was used by another transaction; none of its hashes was mined")
                    settled["failed"] += 1
                    continue
                if not any(client.batch([("eth_getTransactionByHash", [h]) for h in _hashes(record)])):
                    _fail(record, "dropped by the node before it was mined")
                    settled["failed"] += 1
                    continue
            if record.updated_at < replace_before and record.replacements < settings.TX_MAX_REPLACEMENTS:
                try:
                    _replace(client, sending_account(record.from_address), record)
                    settled["replaced"] += 1
                    continue
                except (TransactionError, RpcError) as exc:  # tried again next run
                    log.warning("could not replace %s transaction %s: %s", record.purpose, record.pk, exc)
            settled["pending"] += 1
    return settled


def _hashes(record: SentTransaction) -> list[str]:
    return list(record.tx_hashes or [record.tx_hash])


def _mined_counts(client: RpcClient, addresses: set[str]) -> dict[str, int]:
    """eth_getTransactionCount(latest) of each address, in one round trip."""
    counts = get_transaction_counts(client, addresses, ("latest",))
    return {address: count for (address, _), count in counts.items()}


# -- reorgs and nonce gaps ------------------------------------------------------------------------
def _reorg_floor(client: RpcClient) -> int:
    """The newest block no reorg can take away: the node's `finalized` block, at most head −
    REORG_WINDOW (the stricter of the two, as the scanner)."""
    tip = get_chain_tip(client, None)
    floor = tip.latest.number - settings.REORG_WINDOW
    return floor if tip.finalized is None else min(floor, tip.finalized.number)


def _impossibly_mined(client: RpcClient, on_chain) -> Q:
    """Rows on chain at a nonce the account's mined count has not reached: their block left the
    chain, however old it was when we last looked (the settle job did not run while its block was
    inside the reorg window, e.g. worker and beat down: found by the chaos run). Checked whatever
    their height, or every later send would queue behind the hole for good."""
    addresses = set(on_chain.order_by().values_list("from_address", flat=True).distinct())
    if not addresses:
        return Q(pk__in=[])
    impossible = Q(pk__in=[])
    for address, mined in _mined_counts(client, addresses).items():
        impossible |= Q(from_address=address, nonce__gte=mined)
    return impossible


def recheck_mined_transactions(*, client: RpcClient | None = None) -> dict[str, int]:
    """Mined (or reverted) transactions whose block is above the reorg floor, or whose nonce the
    account's mined count has not reached (`_impossibly_mined`), are checked against the chain:
    one round trip for all their receipts and the canonical blocks at their heights.

    A receipt found (in the same or another block) is recorded again. None found while the
    node has a block at that height other than ours: the block left the chain, and the
    transaction's nonce is unused there. Left MINED, the row would keep its booking out of
    auto-complete and off the emergency actions for good (`_already_sent`), and the unused
    nonce would hold every later send back. So, under the account's nonce row lock:
    - the node has the transaction again (a node puts a reorged block's transactions back in
      its pool) → SUBMITTED: it is followed like any sent transaction;
    - the account's mined count passed its nonce → FAILED (another transaction used it);
    - otherwise → sent again at its nonce (fresh gas and fees), SUBMITTED; when the call would
      now fail (e.g. the customer completed the booking on the new chain) or no key here sends
      from the account → FAILED, and `reconcile_operator_nonces` fills the nonce.
    A node without our block's height (behind, or a chain shorter for now) decides nothing.
    """
    client = client or get_rpc_client()
    counts = {"checked": 0, "moved": 0, "reopened": 0, "resent": 0, "failed": 0, "undecided": 0}
    on_chain = SentTransaction.objects.filter(chain_id=settings.CHAIN_ID, status__in=_ON_CHAIN)
    recent = list(
        on_chain.filter(Q(block_number__gt=_reorg_floor(client)) | _impossibly_mined(client, on_chain))
        .order_by("from_address", "nonce")
    )
    for start in range(0, len(recent), _RECHECK_PER_BATCH):
        chunk = recent[start:start + _RECHECK_PER_BATCH]
        calls = []
        for record in chunk:
            calls += [("eth_getTransactionReceipt", [h]) for h in _hashes(record)]
            calls.append(("eth_getBlockByNumber", [hex(record.block_number), False]))
        answers = iter(client.batch(calls))
        for record in chunk:
            counts["checked"] += 1
            receipts = [(h, next(answers)) for h in _hashes(record)]
            block = next(answers)
            found = next(((h, r) for h, r in receipts if r), None)
            if found is not None:
                if found[1].get("blockHash") != record.block_hash:
                    _record_receipt(record, *found)  # mined again elsewhere, or a row stored before block hashes
                    counts["moved"] += 1
                continue
            if block is None or block.get("hash") == record.block_hash:
                counts["undecided"] += 1  # the node is behind our block, or contradicts itself
                continue
            counts[_after_reorg(client, record, block["hash"])] += 1
    return counts


def _after_reorg(client: RpcClient, record: SentTransaction, canonical_hash: str) -> str:
    """The outcome of a transaction whose block left the chain (see recheck_mined_transactions):
    "moved", "reopened", "resent" or "failed"."""
    with transaction.atomic():
        nonce_row = _lock_nonce_row(record.chain_id, record.from_address)
        record.refresh_from_db()
        if record.status not in _ON_CHAIN:
            return "moved"
        if refresh_transaction(record, client):
            return "moved"  # mined again since the first look
        left = (f"its block {record.block_number} ({record.block_hash or 'hash not recorded'}) left the chain "
                f"(now {canonical_hash})")
        log.warning("%s transaction %s (nonce %s): %s", record.purpose, record.tx_hash, record.nonce, left)
        BACKEND_TRANSACTIONS.labels(record.purpose, "reorged").inc()
        if any(client.batch([("eth_getTransactionByHash", [h]) for h in _hashes(record)])):
            record.status, record.submitted_at = TxStatus.SUBMITTED, timezone.now()
            record.error = f"{left}; the node has it pending again"
            _forget_block(record)
            record.save(update_fields=["status", "submitted_at", "error", "block_number", "block_hash", "gas_used",
                                       "effective_gas_price", "mined_at", "updated_at"])
            return "reopened"
        if _mined_counts(client, {record.from_address})[record.from_address] > record.nonce:
            _fail(record, f"{left}; its nonce {record.nonce} was used by another transaction")
            return "failed"
        try:
            account = sending_account(record.from_address)
            record.gas_limit, record.max_fee_per_gas, record.max_priority_fee_per_gas = _quote(
                client, record.from_address, record.to_address, record.data
            )
        except TransactionError as exc:  # TransactionRejected: the call would now fail
            _fail(record, f"{left}; not sent again: {exc}")
            return "failed"
        record.error = f"{left}; sent again at nonce {record.nonce}"
        try:
            _send_at_nonce(client, account, record, record.nonce)
        except RpcResponseError as exc:
            _fail(record, f"{left}; sending it again was refused: {exc}")
            return "failed"
        nonce_row.next_nonce = max(nonce_row.next_nonce, record.nonce + 1)
        nonce_row.save(update_fields=["next_nonce", "updated_at"])
        return "resent"


def reconcile_operator_nonces(*, client: RpcClient | None = None, now=None) -> dict[str, int]:
    """Each sending account's nonces against the node's `eth_getTransactionCount(pending)`, under
    its nonce row lock (no send takes a nonce meanwhile).

    From the node's pending count up, our transactions are in flight (SUBMITTED) or claim a
    nonce the chain has not used (MINED or REVERTED: a reorg `recheck_mined_transactions` has
    not decided yet, or a node behind us). A nonce below the highest of them that none holds
    is a gap: the node holds every later transaction back until it is used, so it is filled (a
    zero-value transfer to the account itself). Claimed nonces are never filled (the node may
    only be behind), but count as a gap while the chain does not show them. The next nonce
    follows the chain: the pending count, or past our highest transaction, never a nonce kept
    in reserve for a transaction that is gone (the reorg wedge: rows 3 nonces ahead of the
    chain, every later send waiting behind). The gap left is stored on the account's row
    (bookme_operator_nonce_gap, alert OperatorNonceGap)."""
    client = client or get_rpc_client()
    now = now or timezone.now()
    counts = {"accounts": 0, "filled": 0, "gaps": 0}
    for account in OperatorNonce.objects.filter(chain_id=settings.CHAIN_ID).order_by("address"):
        counts["accounts"] += 1
        with transaction.atomic():
            row = _lock_nonce_row(account.chain_id, account.address)
            pending = _pending_count(client, row.address)
            ours = SentTransaction.objects.filter(chain_id=row.chain_id, from_address=row.address, nonce__gte=pending)
            submitted = set(ours.filter(status=TxStatus.SUBMITTED).values_list("nonce", flat=True))
            claimed = set(ours.filter(status__in=_ON_CHAIN).values_list("nonce", flat=True))
            top = max(submitted | claimed, default=pending - 1)
            filled = [n for n in _unused(pending, top, submitted | claimed) if _fill_nonce(client, row.address, n)]
            if filled:
                submitted.update(filled)
                counts["filled"] += len(filled)
                pending = _pending_count(client, row.address)
            row.nonce_gap = len(_unused(pending, top + 1, submitted))
            row.next_nonce = max(pending, top + 1)
            row.checked_at = now
            row.save(update_fields=["nonce_gap", "next_nonce", "checked_at", "updated_at"])
            counts["gaps"] += row.nonce_gap
    return counts


def _pending_count(client: RpcClient, address: str) -> int:
    return get_transaction_counts(client, [address], ("pending",))[(address, "pending")]


def _unused(pending: int, below: int, held: set[int]) -> list[int]:
    """The nonces from the node's pending count up to `below` (excluded) that `held` lacks."""
    return [n for n in range(pending, below) if n not in held]


def _fill_nonce(client: RpcClient, address: str, nonce: int) -> bool:
    """Use `nonce` with a zero-value transfer from the account to itself (recorded as a
    NONCE_FILL transaction). The caller holds the account's nonce row lock. True if broadcast.

    The row is created inside the caller's transaction: a process that dies after the
    broadcast leaves no row, and the node's pending count then shows the nonce used, which is
    all a fill is for."""
    record = SentTransaction.objects.create(
        purpose=TxPurpose.NONCE_FILL, chain_id=settings.CHAIN_ID, from_address=address, to_address=address,
        data="0x", actor=NONCE_FILL_ACTOR,
        reason=f"nonce {nonce} is held by no transaction of ours, and later ones wait behind it",
    )
    try:
        account = sending_account(address)
        record.gas_limit, record.max_fee_per_gas, record.max_priority_fee_per_gas = _quote(
            client, address, address, "0x"
        )
        _send_at_nonce(client, account, record, nonce)
    except (TransactionError, RpcError) as exc:
        _fail(record, f"could not fill nonce {nonce}: {exc}")
        return False
    log.warning("operator nonce %d of %s was held by none of our transactions: filled by %s", nonce, address,
                record.tx_hash)
    return True


def _record_receipt(record: SentTransaction, tx_hash: str, receipt: dict) -> None:
    """Store a receipt's outcome on the row; the outcome is counted when the row changes to it
    (not again when the settle job records a mined transaction's new block after a reorg)."""
    ok = int(receipt.get("status") or "0x0", 16) == 1
    outcome = TxStatus.MINED if ok else TxStatus.REVERTED
    changed = record.status != outcome
    record.tx_hash = tx_hash
    record.status = outcome
    record.block_number = int(receipt["blockNumber"], 16)
    record.block_hash = receipt.get("blockHash") or ""
    record.gas_used = int(receipt["gasUsed"], 16)
    record.effective_gas_price = int(receipt.get("effectiveGasPrice") or "0x0", 16)
    record.mined_at = timezone.now()
    if not ok:
        record.error = "reverted on chain"
    record.save(update_fields=[
        "tx_hash", "status", "block_number", "block_hash", "gas_used", "effective_gas_price", "mined_at", "error",
        "updated_at",
    ])
    if changed:
        BACKEND_TRANSACTIONS.labels(record.purpose, "mined" if ok else "reverted").inc()


def _replace(client: RpcClient, account, record: SentTransaction) -> None:
    """Rebroadcast under the same nonce with both fee caps bumped (or the current market, if higher).

    Under the account's nonce row lock, like every first broadcast and the settle job's
    decision that a row was dropped: settle never sees the new hash stored but not yet
    broadcast. A row settle gave an outcome meanwhile is not broadcast again (TransactionError).
    """
    bump = max(settings.TX_FEE_BUMP_PERCENT, MIN_REPLACEMENT_BUMP_PERCENT)
    history = client.call(*_fee_history_call())
    market_max, market_priority = market_fees(history)
    priority = max(_percent_up(record.max_priority_fee_per_gas, bump), market_priority)
    max_fee = max(_percent_up(record.max_fee_per_gas, bump), market_max, priority)
    with transaction.atomic():
        _lock_nonce_row(record.chain_id, record.from_address)
        current = SentTransaction.objects.get(pk=record.pk)
        if current.status != TxStatus.SUBMITTED:
            record.refresh_from_db()
            raise TransactionError(
                f"{record.purpose} transaction was given an outcome meanwhile: {record.status} {record.error}", record
            )
        if max_fee > settings.TX_MAX_FEE_PER_GAS_WEI:
            # At the cap: rebroadcast what we have (the node may have dropped it) instead of overpaying.
            raw, _ = _sign(account, record, record.nonce, record.max_fee_per_gas, record.max_priority_fee_per_gas)
            _broadcast(client, raw)
            return
        raw, tx_hash = _sign(account, record, record.nonce, max_fee, priority)
        # Known before it is sent: if the broadcast's answer is lost but the node took it (and it
        # is the one mined), the receipt lookup still finds it among our hashes.
        record.tx_hashes = [*current.tx_hashes, tx_hash]
        _note_signed(record, record.tx_hashes)
        _broadcast(client, raw)
        record.max_fee_per_gas, record.max_priority_fee_per_gas = max_fee, priority
        record.tx_hash = tx_hash
        record.replacements += 1
        record.save(update_fields=[
            "max_fee_per_gas", "max_priority_fee_per_gas", "tx_hash", "tx_hashes", "replacements", "updated_at",
        ])
    log.warning("%s tx nonce %d not mined: replaced by %s (maxFee %d, priority %d)",
                record.purpose, record.nonce, tx_hash, max_fee, priority)


def wait_for_transaction(record: SentTransaction, *, account=None, timeout: float | None = None) -> SentTransaction:
    """Poll for the receipt, replacing the transaction with higher fees while it is stuck."""
    account = account or sending_account(record.from_address)
    client = get_rpc_client()
    timeout = settings.TX_RECEIPT_TIMEOUT_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + timeout
    last_broadcast = time.monotonic()
    while True:
        try:
            if refresh_transaction(record, client):
                break
            if time.monotonic() - last_broadcast >= settings.TX_REPLACE_AFTER_SECONDS:
                if record.replacements < settings.TX_MAX_REPLACEMENTS:
                    _replace(client, account, record)
                last_broadcast = time.monotonic()
        except RpcResponseError as exc:
            if _error_says(exc, *_NONCE_USED):
                # The nonce is used: by one of our hashes (found on the next poll) or by a
                # transaction we did not send (then none of ours will ever mine).
                if not refresh_transaction(record, client) and _nonce_taken_by_other(client, record):
                    _fail(record, f"nonce {record.nonce} was used by another transaction")
                    raise TransactionError(record.error, record) from exc
                if record.status != TxStatus.SUBMITTED:
                    break
            elif _error_says(exc, "underpriced"):
                last_broadcast = time.monotonic()  # bump again next round
            else:
                log.warning("while waiting for %s: %s", record.tx_hash, exc)
        except RpcError as exc:  # node unreachable for a moment: keep waiting until the deadline
            log.warning("while waiting for %s: %s", record.tx_hash, exc)
        if time.monotonic() >= deadline:
            record.error = f"no receipt after {timeout:.0f} s (still submitted; replaced {record.replacements}×)"
            record.save(update_fields=["error", "updated_at"])
            BACKEND_TRANSACTIONS.labels(record.purpose, "timeout").inc()
            raise TransactionTimeout(record.error, record)
        time.sleep(settings.TX_POLL_SECONDS)
    if record.status == TxStatus.REVERTED:
        raise TransactionReverted(f"{record.purpose} transaction {record.tx_hash} reverted", record)
    return record


def _nonce_taken_by_other(client: RpcClient, record: SentTransaction) -> bool:
    latest = _mined_counts(client, {record.from_address})[record.from_address]
    return latest > record.nonce and not refresh_transaction(record, client)
