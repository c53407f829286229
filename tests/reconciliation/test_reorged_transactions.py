"""Operator transactions and reorgs, on a real anvil (issue 15 item 4, issue 17 defect 1).

A mined operator transaction whose block leaves the chain must not stay MINED: the booking
would never be completed or refunded (auto-complete and `_already_sent` skip it), and its nonce,
unused on the new chain, would hold every later send of the operator back. The settle job
re-checks mined transactions inside the reorg window, sends a dropped one again at its nonce
(or fills the nonce), brings the operator's next nonce back to the chain's, and says so on
/metrics when a nonce gap or a send pending too long remains. Periodic jobs never wait for
receipts while they hold their lock.
"""
from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from contracts.artifacts import STATUS_COMPLETED, STATUS_PAID, usdc_abi
from contracts.deploy import encode_call
from reconciliation import tasks
from reconciliation.models import OperatorNonce, SentTransaction, TxPurpose, TxStatus
from reconciliation.operations import auto_complete_bookings, auto_complete_candidates, complete_booking_by_operator
from reconciliation.transactions import operator_account, send_transaction, settle_transactions

from .conftest import scan_to_head

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]
ALERTS = Path(django_settings.BASE_DIR) / "ops" / "prometheus-alerts.yml"
RUNBOOK = Path(django_settings.BASE_DIR) / "docs" / "runbook.md"


def mint_call(to: str, amount: int = 1) -> bytes:
    return encode_call(usdc_abi(), "mint", [to, amount])


def nonce_count(chain, address: str, block: str = "latest") -> int:
    return chain.w3.eth.get_transaction_count(address, block)


def reorg(chain, depth: int) -> None:
    """Replace the last `depth` blocks with empty ones: their transactions leave the chain (and
    anvil forgets them, as a node does that never saw them)."""
    chain.rpc("anvil_reorg", [depth, []])


@pytest.fixture
def due_booking(chain_settings, make_booking, pay):
    """A PAID booking (scanned) whose service window passed on both clocks."""
    booking = make_booking(amount="150.00", scheduled_at=timezone.now() + timedelta(seconds=30))
    pay(booking)
    scan_to_head(chain_settings)
    booking.refresh_from_db()
    chain_settings.increase_time(3 * 3600)
    return booking


def test_a_completion_whose_block_left_the_chain_is_sent_again_at_its_nonce(chain_settings, due_booking):
    chain = chain_settings
    record = complete_booking_by_operator(due_booking, actor="system:auto-complete", reason="window passed")
    assert record.status == TxStatus.MINED
    nonce, first_hash = record.nonce, chain.w3.eth.get_transaction_receipt(record.tx_hash)["blockHash"].to_0x_hex()
    reorg(chain, 1)  # the completion's block leaves the chain
    assert chain.get_booking(due_booking.chain_booking_id)[-1] == STATUS_PAID
    assert nonce_count(chain, record.from_address) == nonce

    settled = settle_transactions()

    assert chain.get_booking(due_booking.chain_booking_id)[-1] == STATUS_COMPLETED
    assert settled["reorged"]["resent"] == 1
    record.refresh_from_db()  # sent again at its nonce, mined (anvil mines at once), recorded
    assert record.nonce == nonce and "left the chain" in record.error and len(record.tx_hashes) == 2
    receipt = chain.w3.eth.get_transaction_receipt(record.tx_hash)
    assert record.status == TxStatus.MINED and record.block_number == receipt["blockNumber"]
    assert record.block_hash == receipt["blockHash"].to_0x_hex() != first_hash
    assert nonce_count(chain, record.from_address) == nonce + 1


def test_a_mined_send_back_in_the_pool_after_a_reorg_is_followed_again_not_sent_twice(chain_settings):
    """A node puts a reorged block's transactions back in its pool (anvil forgets them: here
    the very same signed transaction is handed back). The row is SUBMITTED again, with the
    same hash, until it is mined again."""
    chain = chain_settings
    operator = operator_account().address
    record = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test",
                              reason="t")
    raw = chain.w3.eth.get_raw_transaction(record.tx_hash).to_0x_hex()
    chain.rpc("evm_setAutomine", [False])
    try:
        reorg(chain, 1)
        chain.rpc("eth_sendRawTransaction", [raw])

        assert settle_transactions()["reorged"]["reopened"] == 1

        reopened = SentTransaction.objects.get(pk=record.pk)
        assert (reopened.status, reopened.tx_hashes, reopened.block_number) == (
            TxStatus.SUBMITTED, record.tx_hashes, None)
        assert "pending again" in reopened.error
        chain.mine()
    finally:
        chain.rpc("evm_setAutomine", [True])
    settle_transactions()
    reopened.refresh_from_db()
    assert reopened.status == TxStatus.MINED and nonce_count(chain, operator) == record.nonce + 1


def test_a_reorg_that_drops_mined_sends_does_not_wedge_the_operator_account(chain_settings):
    """Issue 17: nonces n..n+2 mined and recorded MINED, a reorg drops them, the chain's count
    goes back to n; the next send took n+3 and waited behind the gap for good."""
    chain = chain_settings
    operator = operator_account().address
    start = nonce_count(chain, operator, "pending")
    mined = [send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, i + 1),
                              actor="test", reason="before the reorg") for i in range(3)]
    assert [r.nonce for r in mined] == [start, start + 1, start + 2]
    reorg(chain, 3)
    assert nonce_count(chain, operator) == start
    later = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 9), actor="test",
                             reason="after the reorg", wait=False)
    assert later.nonce == start + 3 and nonce_count(chain, operator) == start  # held back by the gap

    settle_transactions()

    assert nonce_count(chain, operator) == start + 4  # the gap is gone and everything behind it mined
    settle_transactions()
    rows = SentTransaction.objects.filter(from_address=operator).order_by("nonce")
    assert [(r.nonce, r.status) for r in rows] == [(start + i, TxStatus.MINED) for i in range(4)]
    assert OperatorNonce.objects.get(address=operator).next_nonce == start + 4
    after = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator, 3), actor="test",
                             reason="t", wait=False)
    assert after.nonce == start + 4 and nonce_count(chain, operator) == start + 5


def test_a_dropped_completion_that_would_now_fail_frees_its_booking_and_its_nonce_is_filled(
    chain_settings, due_booking, customer
):
    """On the new chain the customer completed the booking first: sending the operator's
    completion again would revert. The row is given up (the booking is no longer skipped as
    "already sent") and its nonce, which a later send waits behind, is filled."""
    chain = chain_settings
    record = complete_booking_by_operator(due_booking, actor="system:auto-complete", reason="window passed")
    nonce = record.nonce
    reorg(chain, 1)
    chain.complete_service(due_booking.chain_booking_id, customer.address)
    later = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(record.from_address),
                             actor="test", reason="after the reorg", wait=False)
    assert later.nonce == nonce + 1
    later_than_the_window = timezone.now() + timedelta(hours=3)
    assert due_booking not in auto_complete_candidates(later_than_the_window)

    settle_transactions()

    record.refresh_from_db()
    assert record.status == TxStatus.FAILED and "left the chain" in record.error
    assert due_booking in auto_complete_candidates(later_than_the_window)  # the database still says PAID
    filler = SentTransaction.objects.get(purpose=TxPurpose.NONCE_FILL)
    assert (filler.nonce, filler.to_address, filler.data) == (nonce, record.from_address, "0x")
    assert nonce_count(chain, record.from_address) == nonce + 2  # the fill and the send behind it
    settle_transactions()
    assert SentTransaction.objects.get(pk=later.pk).status == TxStatus.MINED
    assert SentTransaction.objects.get(pk=filler.pk).status == TxStatus.MINED


def scrape() -> dict:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def gauge(families, name: str, **labels) -> float | None:
    for s in families[name].samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_a_gap_that_cannot_be_filled_and_a_send_pending_too_long_show_on_metrics(chain_settings, settings):
    from reconciliation.transactions import _sign
    from tests.rpc_proxy import RpcProxy

    chain = chain_settings
    account = operator_account()
    gap = nonce_count(chain, account.address, "pending")
    fee = 2 * chain.w3.eth.get_block("latest")["baseFeePerGas"] + 10**9
    held = SentTransaction.objects.create(
        purpose=TxPurpose.OTHER, chain_id=chain.chain_id, from_address=account.address, to_address=chain.usdc,
        data="0x" + mint_call(account.address).hex(), actor="test", reason="t", gas_limit=200_000,
        max_fee_per_gas=fee, max_priority_fee_per_gas=10**9,
    )
    raw, tx_hash = _sign(account, held, gap + 1, fee, 10**9)
    chain.rpc("eth_sendRawTransaction", [raw])  # waits behind the unused nonce `gap`
    long_ago = timezone.now() - timedelta(seconds=settings.TX_STUCK_ALERT_SECONDS + 5)
    SentTransaction.objects.filter(pk=held.pk).update(
        status=TxStatus.SUBMITTED, nonce=gap + 1, tx_hash=tx_hash, tx_hashes=[tx_hash], submitted_at=long_ago
    )
    OperatorNonce.objects.update_or_create(chain_id=chain.chain_id, address=account.address,
                                           defaults={"next_nonce": gap + 2})
    labels = {"account": account.address}
    assert gauge(scrape(), "bookme_operator_transactions_stuck", **labels) == 1

    with RpcProxy(chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.refuse_methods = {"eth_sendRawTransaction": "txpool is full"}
        settle_transactions()
        assert gauge(scrape(), "bookme_operator_nonce_gap", **labels) == 1  # the fill was refused
        proxy.refuse_methods = {}
        settle_transactions()
    settings.CHAIN_RPC_URLS = [chain.url]
    assert gauge(scrape(), "bookme_operator_nonce_gap", **labels) == 0
    assert chain.w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    settle_transactions()
    assert gauge(scrape(), "bookme_operator_transactions_stuck", **labels) == 0


def test_a_mined_send_the_chain_no_longer_shows_is_sent_again_even_below_the_reorg_window(chain_settings, settings):
    """The settle job did not run while the send's block was inside the reorg window (worker and
    beat down: found by the chaos run), so the block is below the window when it looks. A row
    MINED at a nonce the account's mined count has not reached cannot be right, whatever its
    block's age: it is checked (no receipt, another block at its height) and sent again at its
    nonce, instead of holding every later send back for good."""
    chain = chain_settings
    operator = operator_account().address
    record = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test",
                              reason="t")
    reorg(chain, 1)
    chain.mine(100)  # anvil calls head - 64 finalized
    settings.REORG_WINDOW = 10  # the row's block is now below the window
    assert nonce_count(chain, operator) == record.nonce

    settled = settle_transactions()

    assert settled["reorged"]["checked"] == 1 and settled["reorged"]["resent"] == 1
    record.refresh_from_db()
    assert record.status == TxStatus.MINED and len(record.tx_hashes) == 2 and "left the chain" in record.error
    assert nonce_count(chain, operator) == record.nonce + 1
    assert gauge(scrape(), "bookme_operator_nonce_gap", account=operator) == 0


def test_the_alert_rules_and_the_runbook_cover_gaps_and_stuck_sends():
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert "bookme_operator_nonce_gap" in alerts["OperatorNonceGap"]["expr"]
    assert "bookme_operator_transactions_stuck" in alerts["OperatorTransactionStuck"]["expr"]
    runbook = RUNBOOK.read_text()
    for name in ("OperatorNonceGap", "OperatorTransactionStuck"):
        assert re.search(rf"\*\*{name}\*\*", runbook), name


def test_auto_complete_sends_and_returns_without_waiting_for_receipts(chain_settings, settings, due_booking):
    """A run holds the auto-complete lock: waiting there for receipts kept the next runs out
    (issue 17: 96 of 110 skipped). It sends and returns; the settle job records the outcome."""
    chain = chain_settings
    settings.TX_RECEIPT_TIMEOUT_SECONDS = 3.0
    settings.TX_POLL_SECONDS = 0.05
    chain.rpc("evm_setAutomine", [False])
    try:
        started = time.monotonic()
        counts = auto_complete_bookings(now=timezone.now() + timedelta(hours=3))
        took = time.monotonic() - started
        record = SentTransaction.objects.get(booking=due_booking)
        assert (counts["sent"], counts["failed"]) == (1, 0)
        assert took < settings.TX_RECEIPT_TIMEOUT_SECONDS and record.status == TxStatus.SUBMITTED
        chain.mine()
    finally:
        chain.rpc("evm_setAutomine", [True])
    assert tasks.settle_transactions()["submitted"]["mined"] == 1
    record.refresh_from_db()
    assert record.status == TxStatus.MINED
    assert chain.get_booking(due_booking.chain_booking_id)[-1] == STATUS_COMPLETED


def test_the_settle_job_replaces_a_stuck_send_nobody_waits_for(chain_settings, settings):
    """Sends nobody waits on (auto-complete's) still get their fees raised when they do not mine."""
    chain = chain_settings
    operator = operator_account().address
    chain.rpc("evm_setAutomine", [False])
    try:
        record = send_transaction(purpose=TxPurpose.OTHER, to=chain.usdc, data=mint_call(operator), actor="test",
                                  reason="stuck", wait=False)
        a_while_ago = timezone.now() - timedelta(seconds=settings.TX_REPLACE_AFTER_SECONDS + 1)
        SentTransaction.objects.filter(pk=record.pk).update(updated_at=a_while_ago, submitted_at=a_while_ago)
        assert settle_transactions()["submitted"]["replaced"] == 1
        replaced = SentTransaction.objects.get(pk=record.pk)
        assert replaced.replacements == 1 and replaced.tx_hash != record.tx_hash
        assert replaced.max_fee_per_gas * 8 >= record.max_fee_per_gas * 9
        chain.mine()
    finally:
        chain.rpc("evm_setAutomine", [True])
    settle_transactions()
    replaced.refresh_from_db()
    assert replaced.status == TxStatus.MINED and replaced.tx_hash == replaced.tx_hashes[-1]
