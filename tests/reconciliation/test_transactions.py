"""The operator account's transaction sender on a real anvil: nonces, fees, receipts, replacement."""
from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from contracts.artifacts import usdc_abi
from contracts.deploy import encode_call
from reconciliation.models import OperatorNonce, SentTransaction, TxPurpose, TxStatus
from reconciliation.transactions import (
    TransactionRejected,
    escrow_call,
    operator_account,
    send_transaction,
)

pytestmark = [pytest.mark.chain]


def mint_call(to: str, amount: int = 1) -> bytes:
    """A harmless call anyone may make: MockUSDC.mint."""
    return encode_call(usdc_abi(), "mint", [to, amount])


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_get_distinct_nonces_and_all_mine(chain_settings):
    chain = chain_settings
    operator = operator_account().address
    start_nonce = chain.w3.eth.get_transaction_count(operator, "pending")
    results, errors = [], []

    def send(i):
        try:
            record = send_transaction(
                purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, i + 1),
                actor=f"test:thread-{i}", reason="concurrency test",
            )
            results.append(record.pk)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    records = list(SentTransaction.objects.filter(pk__in=results))
    assert len(records) == 6
    assert sorted(r.nonce for r in records) == list(range(start_nonce, start_nonce + 6))
    assert {r.status for r in records} == {TxStatus.MINED}
    for r in records:
        receipt = chain.w3.eth.get_transaction_receipt(r.tx_hash)
        assert receipt["status"] == 1 and receipt["blockNumber"] == r.block_number
        assert r.gas_limit > r.gas_used  # estimate + margin
        assert r.max_fee_per_gas >= r.max_priority_fee_per_gas > 0
        assert r.actor.startswith("test:thread-") and r.reason == "concurrency test"
    assert OperatorNonce.objects.get(address=operator).next_nonce == start_nonce + 6


@pytest.mark.django_db(transaction=True)
def test_a_stuck_transaction_is_replaced_with_a_higher_fee_and_mined(chain_settings, settings):
    chain = chain_settings
    settings.TX_REPLACE_AFTER_SECONDS = 1.0
    settings.TX_POLL_SECONDS = 0.05
    operator = operator_account().address
    outcome = {}

    def send():
        try:
            outcome["record"] = send_transaction(
                purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test", reason="stuck"
            )
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    chain.rpc("evm_setAutomine", [False])  # nothing mines until we say so: the transaction is stuck
    try:
        sender = threading.Thread(target=send)
        sender.start()
        first = wait_for_row(lambda row: row.status == TxStatus.SUBMITTED)
        assert first.replacements == 0
        replaced = wait_for_row(lambda row: row.replacements >= 1)
        chain.mine()
        sender.join(30)
    finally:
        chain.rpc("evm_setAutomine", [True])
    assert "error" not in outcome, outcome.get("error")
    record = outcome["record"]
    assert record.status == TxStatus.MINED
    assert record.tx_hashes[0] == first.tx_hash and record.tx_hash == record.tx_hashes[-1] != first.tx_hash
    assert len(record.tx_hashes) == record.replacements + 1
    mined = chain.w3.eth.get_transaction(record.tx_hash)
    assert mined["nonce"] == first.nonce == record.nonce
    assert chain.w3.eth.get_transaction_receipt(record.tx_hash)["status"] == 1
    # The replacement raised both fee caps by at least 12.5 % (nodes refuse less).
    assert replaced.max_priority_fee_per_gas * 8 >= first.max_priority_fee_per_gas * 9
    assert replaced.max_fee_per_gas * 8 >= first.max_fee_per_gas * 9
    assert mined["maxFeePerGas"] == record.max_fee_per_gas


def wait_for_row(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = SentTransaction.objects.filter(reason="stuck").first()
        if row is not None and condition(row):
            return row
        time.sleep(0.02)
    pytest.fail("the transaction row never reached the expected state")


@pytest.mark.django_db
def test_a_call_that_would_revert_is_refused_before_any_nonce_is_used(chain_settings):
    chain = chain_settings
    operator = operator_account().address
    before = chain.w3.eth.get_transaction_count(operator, "pending")
    unknown = "0x" + "ab" * 32
    with pytest.raises(TransactionRejected, match="BookingNotPaid") as caught:
        send_transaction(
            purpose=TxPurpose.EMERGENCY_CANCEL,
            data=escrow_call("emergencyCancelBooking", bytes.fromhex(unknown[2:]), "x"),
            actor="test", reason="nothing to refund",
        )
    record = caught.value.record
    assert record.status == TxStatus.FAILED and "BookingNotPaid" in record.error and record.nonce is None
    assert chain.w3.eth.get_transaction_count(operator, "pending") == before


@pytest.mark.django_db(transaction=True)
def test_stale_rows_get_an_outcome_and_a_dropped_nonce_is_used_again(chain_settings, settings):
    """A send nobody waits on any more (timeout, killed worker) must not block the operator's
    later sends: the beat job settles it, and a nonce the node dropped is handed out again."""
    from datetime import timedelta

    from django.utils import timezone

    from reconciliation.transactions import settle_submitted_transactions

    chain = chain_settings
    operator = operator_account().address
    mined = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test", reason="t")
    free_nonce = chain.w3.eth.get_transaction_count(operator, "pending")
    old = timezone.now() - timedelta(seconds=settings.TX_RECEIPT_TIMEOUT_SECONDS + 60)

    def stale(**fields):
        return SentTransaction.objects.create(
            purpose=TxPurpose.OTHER, chain_id=chain.chain_id, from_address=operator, to_address=chain.usdc,
            data="0x", actor="test", reason="t", **fields,
        )

    # A row whose receipt wait was cut short although it was mined.
    SentTransaction.objects.filter(pk=mined.pk).update(status=TxStatus.SUBMITTED, submitted_at=old)
    dropped = stale(status=TxStatus.SUBMITTED, nonce=free_nonce, tx_hash="0x" + "ab" * 32,
                    tx_hashes=["0x" + "ab" * 32], submitted_at=old)
    never_sent = stale(status=TxStatus.PREPARING)
    SentTransaction.objects.filter(pk=never_sent.pk).update(created_at=old)
    OperatorNonce.objects.filter(address=operator).update(next_nonce=free_nonce + 1)

    assert settle_submitted_transactions() == {"mined": 1, "failed": 2, "replaced": 0, "pending": 0}
    assert SentTransaction.objects.get(pk=mined.pk).status == TxStatus.MINED
    assert SentTransaction.objects.get(pk=dropped.pk).status == TxStatus.FAILED
    assert SentTransaction.objects.get(pk=never_sent.pk).status == TxStatus.FAILED

    # Nothing outstanding any more: the next send takes the dropped nonce and is mined.
    after = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 2), actor="test",
                             reason="t")
    assert after.nonce == free_nonce and after.status == TxStatus.MINED


@pytest.mark.django_db(transaction=True)
def test_a_lost_broadcast_answer_does_not_send_the_call_twice(chain_settings, settings):
    """The node takes and mines the transaction but its answer is lost (502); the RPC client's
    retry is told "nonce too low". That is our own transaction: recorded under its nonce, not
    signed again under the next one."""
    from tests.rpc_proxy import RpcProxy

    chain = chain_settings
    operator = operator_account().address
    start = chain.w3.eth.get_transaction_count(operator, "latest")
    with RpcProxy(chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.lose_answer_once = {"eth_sendRawTransaction"}
        record = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test",
                                  reason="t")
        assert not proxy.lose_answer_once and proxy.seen.count("eth_sendRawTransaction") == 2
    assert record.status == TxStatus.MINED and record.nonce == start
    assert chain.w3.eth.get_transaction_count(operator, "latest") == start + 1  # sent once
    assert chain.w3.eth.get_transaction_receipt(record.tx_hash)["status"] == 1
    assert OperatorNonce.objects.get(address=operator).next_nonce == start + 1


@pytest.mark.django_db(transaction=True)
def test_a_nonce_gap_left_by_a_dropped_transaction_is_filled_first(chain_settings):
    """A was given up (dropped) after B was sent under the next nonce: the node holds B back
    until A's nonce is used. The next send fills the gap instead of queuing behind B."""
    from reconciliation.transactions import _sign

    chain = chain_settings
    account = operator_account()
    gap = chain.w3.eth.get_transaction_count(account.address, "pending")

    def row(**fields):
        return SentTransaction.objects.create(
            purpose=TxPurpose.OTHER, chain_id=chain.chain_id, from_address=account.address, to_address=chain.usdc,
            data="0x" + mint_call(account.address).hex(), actor="test", reason="t", **fields,
        )

    row(status=TxStatus.FAILED, nonce=gap, tx_hash="0x" + "cd" * 32, tx_hashes=["0x" + "cd" * 32])
    fee = 2 * chain.w3.eth.get_block("latest")["baseFeePerGas"] + 10**9
    held = row(gas_limit=200_000, max_fee_per_gas=fee, max_priority_fee_per_gas=10**9)
    raw, tx_hash = _sign(account, held, gap + 1, fee, 10**9)
    chain.rpc("eth_sendRawTransaction", [raw])
    SentTransaction.objects.filter(pk=held.pk).update(
        status=TxStatus.SUBMITTED, nonce=gap + 1, tx_hash=tx_hash, tx_hashes=[tx_hash]
    )
    OperatorNonce.objects.update_or_create(
        chain_id=chain.chain_id, address=account.address, defaults={"next_nonce": gap + 2}
    )
    assert chain.w3.eth.get_transaction_count(account.address, "pending") == gap  # B is held back

    filler = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(account.address, 2),
                              actor="test", reason="t")
    assert filler.nonce == gap and filler.status == TxStatus.MINED
    chain.mine()
    assert chain.w3.eth.get_transaction_receipt(tx_hash)["status"] == 1  # B went through behind it
    assert chain.w3.eth.get_transaction_count(account.address, "latest") == gap + 2


class _SenderKilled(BaseException):
    """The sending process dying (not an error any handler catches)."""


def _send_and_die(monkeypatch, to: str, *, after_broadcast: bool) -> None:
    """send_transaction whose process dies right before, or right after, the node takes the
    transaction; the database is left as the dead process left it."""
    from reconciliation import transactions

    real_broadcast = transactions._broadcast

    def broadcast_and_die(client, raw):
        if after_broadcast:
            real_broadcast(client, raw)
        raise _SenderKilled

    operator = operator_account().address
    monkeypatch.setattr(transactions, "_broadcast", broadcast_and_die)
    with pytest.raises(_SenderKilled):
        send_transaction(purpose=TxPurpose.OTHER, to=to, data=mint_call(operator), actor="test", reason="t")
    monkeypatch.undo()


@pytest.mark.django_db(transaction=True)
def test_a_sender_stopping_right_after_the_broadcast_leaves_the_hash_to_settle(chain_settings, settings, monkeypatch):
    """The node took the transaction and the sending process died before it wrote anything
    more. The row must already hold the nonce and hash, so the settle job finds the receipt
    instead of recording "never broadcast" for a call that ran on chain."""
    from datetime import timedelta

    from django.utils import timezone

    from reconciliation import transactions

    chain = chain_settings
    operator = operator_account().address
    start = chain.w3.eth.get_transaction_count(operator, "latest")
    _send_and_die(monkeypatch, chain.usdc, after_broadcast=True)
    assert chain.w3.eth.get_transaction_count(operator, "latest") == start + 1  # it ran on chain
    later = timezone.now() + timedelta(seconds=settings.TX_RECEIPT_TIMEOUT_SECONDS + 60)
    settled = transactions.settle_submitted_transactions(now=later)
    assert settled == {"mined": 1, "failed": 0, "replaced": 0, "pending": 0}
    record = SentTransaction.objects.get()
    assert (record.status, record.nonce) == (TxStatus.MINED, start)
    assert chain.w3.eth.get_transaction_receipt(record.tx_hash)["status"] == 1
    # The nonce row went back with the dead sender's transaction; the node's count moves past it.
    after = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 2), actor="test",
                             reason="t")
    assert (after.nonce, after.status) == (start + 1, TxStatus.MINED)


@pytest.mark.django_db(transaction=True)
def test_a_sender_stopping_right_before_the_broadcast_leaves_no_gap(chain_settings, settings, monkeypatch):
    """The nonce and hash were stored but nothing reached the node: the next send takes the
    same nonce, and the settle job records the stopped row's nonce as used by another."""
    from datetime import timedelta

    from django.utils import timezone

    from reconciliation import transactions

    chain = chain_settings
    operator = operator_account().address
    start = chain.w3.eth.get_transaction_count(operator, "latest")
    _send_and_die(monkeypatch, chain.usdc, after_broadcast=False)
    stopped = SentTransaction.objects.get()
    assert (stopped.status, stopped.nonce) == (TxStatus.SUBMITTED, start)
    after = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 2), actor="test",
                             reason="t")
    assert (after.nonce, after.status) == (start, TxStatus.MINED)
    later = timezone.now() + timedelta(seconds=settings.TX_RECEIPT_TIMEOUT_SECONDS + 60)
    settled = transactions.settle_submitted_transactions(now=later)
    assert settled == {"mined": 0, "failed": 1, "replaced": 0, "pending": 0}
    stopped.refresh_from_db()
    assert stopped.status == TxStatus.FAILED and "used by another" in stopped.error


@pytest.mark.django_db(transaction=True)
def test_a_refused_broadcast_leaves_no_nonce_gap(chain_settings, settings):
    """Refused by the node after the nonce and hash were stored: the row is FAILED and the
    nonce was not taken (no gap that would hold later transactions back)."""
    from tests.rpc_proxy import RpcProxy

    chain = chain_settings
    operator = operator_account().address
    start = chain.w3.eth.get_transaction_count(operator, "pending")
    with RpcProxy(chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.refuse_methods = {"eth_sendRawTransaction": "insufficient funds for gas * price + value"}
        with pytest.raises(TransactionRejected, match="insufficient funds") as caught:
            send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test", reason="t")
        proxy.refuse_methods = {}
        assert caught.value.record.status == TxStatus.FAILED
        assert not OperatorNonce.objects.filter(address=operator, next_nonce__gt=start).exists()  # not taken
        after = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 2), actor="test",
                                 reason="t")
    assert (after.nonce, after.status) == (start, TxStatus.MINED)


@pytest.mark.django_db(transaction=True)
def test_settling_while_the_waiter_replaces_the_transaction_leaves_the_replacement_live(
    chain_settings, settings, monkeypatch
):
    """The node lost the first broadcast; the row is past the receipt timeout while its waiter
    replaces it. The settle job must not read the row between the new hash being stored and
    its broadcast and call it "dropped" (FAILED, its nonce free for the next send) while the
    replacement goes out: both work under the account's nonce row lock, so settle sees the
    replacement once it is broadcast, and the row is mined."""
    from datetime import timedelta

    from django.utils import timezone

    from chain_events.rpc import get_rpc_client
    from reconciliation import transactions

    chain = chain_settings
    account = operator_account()
    settled: dict = {}
    real_broadcast = transactions._broadcast

    def broadcast_while_settle_runs(client, raw):
        def settle():
            try:
                settled["result"] = transactions.settle_submitted_transactions()
            finally:
                connection.close()

        settled["thread"] = threading.Thread(target=settle)
        settled["thread"].start()
        settled["thread"].join(1.0)  # unguarded, settle decides here, before the broadcast
        real_broadcast(client, raw)

    chain.rpc("evm_setAutomine", [False])
    try:
        record = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(account.address),
                                  actor="test", reason="race", wait=False)
        chain.rpc("anvil_dropTransaction", [record.tx_hash])  # the node lost the first broadcast
        old = timezone.now() - timedelta(seconds=settings.TX_RECEIPT_TIMEOUT_SECONDS + 60)
        SentTransaction.objects.filter(pk=record.pk).update(submitted_at=old)
        record.refresh_from_db()
        monkeypatch.setattr(transactions, "_broadcast", broadcast_while_settle_runs)
        transactions._replace(get_rpc_client(), account, record)
        settled["thread"].join(10)
        assert settled["result"] == {"mined": 0, "failed": 0, "replaced": 0, "pending": 1}
        assert SentTransaction.objects.get(pk=record.pk).status == TxStatus.SUBMITTED
        chain.mine()
    finally:
        chain.rpc("evm_setAutomine", [True])
    record.refresh_from_db()
    assert transactions.refresh_transaction(record)
    record.refresh_from_db()
    assert record.status == TxStatus.MINED and record.tx_hash == record.tx_hashes[-1] != record.tx_hashes[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("nonsense", ["0xdeadbeef", {"status": "0x1"}], ids=["string", "receipt-without-block"])
def test_a_primary_answering_nonsense_receipts_does_not_stop_the_settle_pass(chain_settings, settings, nonsense):
    """Found by the chaos run: the primary answered a string for eth_getTransactionReceipt and the
    settle pass crashed on it (`'str' object has no attribute 'get'`). The healthy fallback answers
    instead; the mined rows keep their receipts, a submitted one gets its outcome."""
    from reconciliation.transactions import refresh_transaction, settle_transactions
    from tests.rpc_proxy import RpcProxy

    chain = chain_settings
    operator = operator_account().address
    mined = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test", reason="t")
    submitted = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 2), actor="test",
                                 reason="t")
    SentTransaction.objects.filter(pk=submitted.pk).update(status=TxStatus.SUBMITTED, block_number=None,
                                                           block_hash="")
    with RpcProxy(chain.url) as primary:
        primary.nonsense_answers["eth_getTransactionReceipt"] = nonsense
        settings.CHAIN_RPC_URLS = [primary.url, chain.url]

        settled = settle_transactions()
        submitted.refresh_from_db()
        assert refresh_transaction(submitted) is True

        assert "eth_getTransactionReceipt" in primary.seen
    assert settled["reorged"]["checked"] >= 1 and settled["reorged"]["moved"] == 0
    for record in (mined, submitted):
        record.refresh_from_db()
        assert record.status == TxStatus.MINED and record.block_number is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_primary_answering_nonsense_moves_no_operator_nonce(chain_settings, settings):
    """"0xdeadbeef" looks like a transaction count. Taken as one, a send would go out at a nonce the
    chain never reaches, every later send would queue behind it, and the gap to fill would be
    billions of nonces long. Counts are asked beside the head's header, which must check: the
    healthy fallback answers them."""
    from reconciliation.transactions import reconcile_operator_nonces
    from tests.rpc_proxy import RpcProxy

    chain = chain_settings
    operator = operator_account().address
    first = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test", reason="t")
    with RpcProxy(chain.url, mode="garbage") as primary:
        settings.CHAIN_RPC_URLS = [primary.url, chain.url]
        reconcile_operator_nonces()
        assert OperatorNonce.objects.get(address=operator).next_nonce == first.nonce + 1
        second = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 2), actor="test",
                                  reason="t")
        assert "eth_getTransactionCount" in primary.seen
    assert second.nonce == first.nonce + 1 and second.status == TxStatus.MINED
    assert OperatorNonce.objects.get(address=operator).next_nonce == first.nonce + 2
