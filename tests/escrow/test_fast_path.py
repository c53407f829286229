"""The receipt fast path (`POST /api/bookings/{id}/submit-transaction/`) on a real anvil.

A reported transaction is applied at once through the scanner's own ingest, so the scanner
meeting the same logs later (or earlier) changes nothing.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from chain_events import scanner
from chain_events.cursor import held_block_hash
from chain_events.models import ChainEvent, Orphan, SyncCursor
from contracts.artifacts import EVENT_TOPICS
from escrow import fastpath
from escrow.models import AttentionItem, Booking, BookingStatusChange, PlatformFee, ProviderEarnings, SignatureNonce
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.chain_harness import booking_auth_tuple
from tests.escrow.helpers import wallet, wallet_client
from tests.rpc_proxy import RpcProxy

pytestmark = [pytest.mark.django_db, pytest.mark.chain]


@pytest.fixture
def customer(chain_settings):
    return chain_settings.accounts.customers[0]


@pytest.fixture
def provider():
    return wallet("fast-path-provider")


@pytest.fixture
def make_booking(customer, provider):
    def make(amount="100.50"):
        return create_booking(
            customer=customer.address,
            provider=provider.address,
            amount=amount,
            scheduled_at=timezone.now() + timedelta(days=2),
            description="fast path",
        )

    return make


@pytest.fixture
def client(customer):
    return wallet_client(customer)


def pay(chain, booking, customer) -> str:
    auth = sign_payment_authorization(booking)
    receipt = chain.pay_booking(auth.message, auth.signature, customer.address)
    return receipt["transactionHash"].to_0x_hex()


def submit(client, booking, tx_hash):
    return client.post(f"/api/bookings/{booking.uuid}/submit-transaction/", {"tx_hash": tx_hash}, format="json")


def scan_to_head(chain) -> None:
    head = chain.block_number()
    report = scanner.scan_chain()
    assert not report.errors, report.errors

    assert SyncCursor.objects.get().last_block >= head


def effects() -> dict:
    """Everything the chain sync may write for bookings (not the cursor, not timestamps of touches)."""
    return {
        "bookings": list(
            Booking.objects.order_by("id").values_list(
                "id", "status", "payment_tx_hash", "completion_tx_hash", "cancellation_tx_hash",
                "chain_confirmed_at", "chain_data", "needs_attention",
            )
        ),
        "attention": list(AttentionItem.objects.order_by("id").values_list("id", "booking_id", "kind", "reason")),
        "changes": list(
            BookingStatusChange.objects.order_by("id")
            .values_list("id", "from_status", "to_status", "source", "tx_hash")
        ),
        "fees": list(
            PlatformFee.objects.order_by("id").values_list(
                "id", "booking_id", "platform_amount", "inviter_amount", "provider_amount", "tx_hash"
            )
        ),
        "earnings": list(
            ProviderEarnings.objects.order_by("id")
            .values_list("provider_address", "total_earned", "services_completed")
        ),
        "events": list(
            ChainEvent.objects.order_by("id").values_list(
                "id", "status", "source", "tx_hash", "log_index", "block_hash", "retry_count"
            )
        ),
        "nonces": list(SignatureNonce.objects.order_by("id").values_list("id", "consumed_at", "consumed_tx_hash")),
        "orphans": list(Orphan.objects.order_by("id").values_list("id", "chain_status", "status")),
    }


def chain_history(booking):
    return list(
        booking.status_changes.filter(source="chain").order_by("id").values_list("from_status", "to_status", "tx_hash")
    )


# -- the fast path, then the scanner ------------------------------------------------------------
def test_submit_after_paying_is_paid_at_once_and_the_scanner_then_changes_nothing(
    chain_settings, make_booking, customer, provider, client
):
    chain = chain_settings
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)

    response = submit(client, booking, tx_hash)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "mined"
    assert body["events"] == ["BookingCreatedAndPaid"]
    assert body["booking_status"] == "PAID"
    assert body["tx_hash"] == tx_hash
    # The booking's own API shows it PAID, with the chain step in its history.
    shown = client.get(f"/api/bookings/{booking.uuid}/").json()
    assert shown["status"] == "PAID"
    assert chain_history(booking) == [("PENDING_PAYMENT", "PAID", tx_hash)]
    event = ChainEvent.objects.get()
    assert (event.tx_hash, event.status, event.source) == (tx_hash, "PROCESSED", "receipt")
    assert SignatureNonce.objects.get(booking=booking).consumed_tx_hash == tx_hash

    # Completion reported the same way: COMPLETED, one fee row, provider earnings.
    complete_tx = chain.complete_service(booking.chain_booking_id, customer.address)["transactionHash"].to_0x_hex()
    response = submit(client, booking, complete_tx)
    assert response.status_code == 200, response.content
    assert response.json()["booking_status"] == "COMPLETED"
    fee = PlatformFee.objects.get(booking=booking)
    assert (fee.platform_amount, fee.provider_amount, fee.tx_hash) == (10_050_000, 90_450_000, complete_tx)
    earnings = ProviderEarnings.objects.get(provider_address=provider.address)
    assert (earnings.total_earned, earnings.services_completed) == (90_450_000, 1)

    before = effects()
    scan_to_head(chain)
    assert effects() == before  # no second status change, fee or earnings; no new event rows
    # Reporting the same transactions again changes nothing either.
    assert submit(client, booking, tx_hash).json()["booking_status"] == "COMPLETED"
    assert submit(client, booking, complete_tx).status_code == 200
    assert effects() == before
    assert chain_history(booking) == [("PENDING_PAYMENT", "PAID", tx_hash), ("PAID", "COMPLETED", complete_tx)]


def test_scanner_first_then_submit_changes_nothing_and_answers_the_status(
    chain_settings, make_booking, customer, client
):
    chain = chain_settings
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)
    scan_to_head(chain)
    booking.refresh_from_db()
    assert booking.status == "PAID"
    before = effects()

    response = submit(client, booking, tx_hash)

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["booking_status"]) == ("mined", "PAID")
    assert effects() == before


def test_provider_may_report_and_the_same_receipt_applies_once(chain_settings, make_booking, customer, provider):
    chain = chain_settings
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)
    answers = [submit(wallet_client(who), booking, tx_hash) for who in (provider, customer)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["booking_status"] for a in answers] == ["PAID", "PAID"]
    assert ChainEvent.objects.count() == 1
    assert chain_history(booking) == [("PENDING_PAYMENT", "PAID", tx_hash)]


# -- what is ignored or refused ------------------------------------------------------------------
def _spoofing_init_code(chain_booking_id: str) -> str:
    """Creation code of a contract that emits LOG2(BookingCreatedAndPaid topic, bookingId) with
    6 zero words of data (a well-formed payment event shape) from ITS OWN address, then stops."""
    topic0 = EVENT_TOPICS["BookingCreatedAndPaid"][2:]
    booking_id = chain_booking_id[2:]
    return "0x" + "7f" + booking_id + "7f" + topic0 + "60c0" + "6000" + "a2" + "00"


def test_our_event_topic_from_another_contract_is_ignored(chain_settings, make_booking, customer, client):
    chain = chain_settings
    booking = make_booking()
    w3 = chain.w3
    tx = w3.eth.send_transaction({"from": customer.address, "data": _spoofing_init_code(booking.chain_booking_id)})
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    assert [log["topics"][0].to_0x_hex() for log in receipt["logs"]] == [EVENT_TOPICS["BookingCreatedAndPaid"]]

    response = submit(client, booking, tx.to_0x_hex())

    assert response.status_code == 400, response.content
    assert "escrow" in response.json()["tx_hash"][0]
    booking.refresh_from_db()
    assert booking.status == "PENDING_PAYMENT"
    assert not ChainEvent.objects.exists()
    assert not Orphan.objects.exists()


def test_a_token_transfer_is_refused_on_tx_hash(chain_settings, make_booking, customer, client):
    chain = chain_settings
    booking = make_booking()
    receipt = chain.transact(chain.usdc_contract.functions.transfer(wallet("someone").address, 5), customer.address)
    response = submit(client, booking, receipt["transactionHash"].to_0x_hex())
    assert response.status_code == 400
    assert "tx_hash" in response.json()
    assert not ChainEvent.objects.exists()


def test_a_payment_of_another_booking_is_refused_for_this_one(chain_settings, make_booking, customer, client):
    chain = chain_settings
    mine, other = make_booking(), make_booking(amount="7")
    tx_hash = pay(chain, other, customer)
    response = submit(client, mine, tx_hash)
    assert response.status_code == 400
    assert "this booking" in response.json()["tx_hash"][0]
    mine.refresh_from_db()
    assert mine.status == "PENDING_PAYMENT"


def test_a_reverted_payment_is_reported_and_nothing_is_stored(chain_settings, make_booking, customer, client):
    chain = chain_settings
    booking = make_booking()
    auth = sign_payment_authorization(booking)
    forged = "0x" + "11" * 65  # not the backend signer's signature: the contract reverts
    tx = chain.escrow_contract.functions.createAndPayBooking(
        booking_auth_tuple(auth.message), bytes.fromhex(forged[2:])
    )
    tx_hash = tx.transact({"from": customer.address, "gas": 400_000})
    assert chain.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0

    response = submit(client, booking, tx_hash.to_0x_hex())

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["booking_status"]) == ("reverted", "PENDING_PAYMENT")
    assert response.json()["reason"]["error"] == "InvalidSignature"
    assert not ChainEvent.objects.exists()


def test_a_hash_the_node_never_saw_is_202_unknown_with_polling_advice(chain_settings, make_booking, client):
    booking = make_booking()
    response = submit(client, booking, "0x" + "cd" * 32)
    assert response.status_code == 202, response.content
    assert response["Retry-After"] == "3"
    body = response.json()
    hint = body.pop("hint")
    assert body == {
        "status": "unknown", "tx_hash": "0x" + "cd" * 32, "block_number": None, "events": [],
        "booking_status": "PENDING_PAYMENT", "reason": None, "retry_after_seconds": 3,
    }
    assert "send it again" in hint


def test_a_mined_payment_below_the_confirmation_depth_is_left_to_the_scanner(
    chain_settings, settings, make_booking, customer, client
):
    settings.CHAIN_CONFIRMATIONS = 3
    booking = make_booking()
    tx_hash = pay(chain_settings, booking, customer)
    response = submit(client, booking, tx_hash)
    assert response.status_code == 202, response.content
    assert (response.json()["status"], response.json()["booking_status"]) == ("pending", "PENDING_PAYMENT")
    assert not ChainEvent.objects.exists()
    chain_settings.mine(3)
    assert submit(client, booking, tx_hash).json()["booking_status"] == "PAID"


def test_a_receipt_from_a_block_the_scanner_holds_otherwise_is_refused(
    chain_settings, monkeypatch, make_booking, customer, client
):
    """A node still on an abandoned fork answers the receipt in another block at a height the
    scanner already applied: refused (409), nothing is stored or re-applied, and the stored row
    keeps the canonical block hash."""
    booking = make_booking()
    tx_hash = pay(chain_settings, booking, customer)
    scan_to_head(chain_settings)
    event = ChainEvent.objects.get()
    assert held_block_hash(event.block_number) == event.block_hash
    real_get_receipt = fastpath.get_receipt

    def stale_fork_receipt(client_, tx):
        receipt = real_get_receipt(client_, tx)
        return {**receipt, "blockHash": "0x" + "0f" * 32,
                "logs": [{**log, "blockHash": "0x" + "0f" * 32} for log in receipt["logs"]]}

    monkeypatch.setattr(fastpath, "get_receipt", stale_fork_receipt)
    changes_before = BookingStatusChange.objects.count()
    response = submit(client, booking, tx_hash)
    assert response.status_code == 409, response.content
    assert f"the chain's block {event.block_number} is {event.block_hash}" in response.json()["detail"]
    assert ChainEvent.objects.get().block_hash == event.block_hash
    assert BookingStatusChange.objects.count() == changes_before


class StaleNode(RpcProxy):
    """A node still on a fork the chain left: everything goes to anvil, except the receipts it
    was given, which it answers as it saw them on that fork."""

    def __init__(self, upstream: str, receipts: dict[str, dict]):
        super().__init__(upstream)
        self.receipts = receipts

    def answer(self, body: bytes) -> tuple[int, bytes]:
        request = json.loads(body)
        items = request if isinstance(request, list) else [request]
        if all(i["method"] == "eth_getTransactionReceipt" and i["params"][0] in self.receipts for i in items):
            out = [{"jsonrpc": "2.0", "id": i["id"], "result": self.receipts[i["params"][0]]} for i in items]
            return 200, json.dumps(out if isinstance(request, list) else out[0]).encode()
        return super().answer(body)


@pytest.mark.parametrize("scanned", [True, False], ids=["below-the-held-window", "ahead-of-the-scanner"])
def test_a_payment_reorganised_out_is_refused_wherever_its_block_is(
    chain_settings, settings, make_booking, customer, client, scanned
):
    """The payment is mined, reported by nobody, then a reorg drops its block (anvil_reorg) and the
    transaction with it. A node still on the old fork answers its receipt. Whether the scanner has
    since finalized that height (no held hash) or not reached it yet, the receipt's block is checked
    against the chain: refused (409), nothing stored, the booking stays unpaid."""
    chain = chain_settings
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)
    fork_receipt = chain.rpc("eth_getTransactionReceipt", [tx_hash])
    number = int(fork_receipt["blockNumber"], 16)
    chain.rpc("anvil_reorg", [chain.block_number() - number + 1, []])
    assert chain.rpc("eth_getTransactionReceipt", [tx_hash]) is None  # gone from the chain
    canonical = chain.rpc("eth_getBlockByNumber", [hex(number), False])["hash"]
    assert canonical != fork_receipt["blockHash"]
    if scanned:
        chain.mine(settings.REORG_WINDOW + 2)  # the payment's height becomes final: no hash held for it
        scan_to_head(chain)
        assert held_block_hash(number) is None and SyncCursor.objects.get().last_block > number
    before = effects()

    with StaleNode(chain.url, {tx_hash: fork_receipt}) as node:
        settings.CHAIN_RPC_URLS = [node.url]
        response = submit(client, booking, tx_hash)

    assert response.status_code == 409, response.content
    detail = response.json()["detail"]
    assert f"block {number} {fork_receipt['blockHash']}" in detail and canonical in detail
    assert "Nothing was applied" in detail
    assert effects() == before
    assert not ChainEvent.objects.exists()
    booking.refresh_from_db()
    assert booking.status == "PENDING_PAYMENT"


def test_a_receipt_of_the_chain_outside_the_held_window_is_applied_with_one_header_read(
    chain_settings, settings, make_booking, customer, client
):
    """Beside the receipt, one batched round trip: the block's header (only outside the held
    window), the head and the booking's other logs of that block (escrow.fastpath.read_receipt_block)."""
    chain = chain_settings
    settings.CHAIN_CONFIRMATIONS = 1
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)
    chain.mine()
    with RpcProxy(chain.url) as node:
        settings.CHAIN_RPC_URLS = [node.url]
        response = submit(client, booking, tx_hash)
        assert (response.status_code, response.json()["booking_status"]) == (200, "PAID")
        assert node.requests == 2  # the receipt; the block's header, the head and the block's logs in one batch
        assert node.seen == ["eth_getTransactionReceipt", "eth_getBlockByNumber", "eth_getBlockByNumber", "eth_getLogs"]


def test_rpc_down_is_a_503_json_answer(chain_settings, settings, make_booking, client):
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]  # nothing listens there
    settings.RPC_RETRIES = 0
    booking = make_booking()
    response = submit(client, booking, "0x" + "ab" * 32)
    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["detail"]
    booking.refresh_from_db()
    assert booking.status == "PENDING_PAYMENT"


def test_a_node_refusing_the_blocks_logs_is_failed_over_not_a_503(chain_settings, settings, make_booking, customer,
                                                                  client):
    """The receipt's block is the chain's, but the node answers the same-block logs with an error
    (a provider's rate limit, a backend without the block yet): the next endpoint is asked, as for
    any other call. Only for a block the chain left is that error an answer (refused with 409)."""
    chain = chain_settings
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)
    with RpcProxy(chain.url) as primary:
        primary.refuse_methods = {"eth_getLogs": "Too many requests, please slow down"}
        settings.CHAIN_RPC_URLS = [primary.url, chain.url]
        response = submit(client, booking, tx_hash)
        assert "eth_getLogs" in primary.seen
    assert (response.status_code, response.json()["booking_status"]) == (200, "PAID"), response.content


def test_a_node_behind_the_receipts_block_is_failed_over(chain_settings, settings, make_booking, customer, client):
    """The scanner holds the block's hash (no header asked), and the node answering the batch is
    behind that block: its head cannot count the confirmations, nor its logs call stand for the
    block. The next endpoint answers."""
    chain = chain_settings
    booking = make_booking()
    tx_hash = pay(chain, booking, customer)
    chain.mine(2)
    scan_to_head(chain)
    Booking.objects.filter(pk=booking.pk).update(status="PENDING_PAYMENT")  # as if the scanner had not applied it
    ChainEvent.objects.all().delete()
    settings.CHAIN_CONFIRMATIONS = 1
    number = int(chain.rpc("eth_getTransactionReceipt", [tx_hash])["blockNumber"], 16)
    assert held_block_hash(number) is not None
    with RpcProxy(chain.url) as primary:
        primary.lag_blocks = chain.block_number() - number + 1  # its head is just below the receipt's block
        settings.CHAIN_RPC_URLS = [primary.url, chain.url]
        assert fastpath.process_transaction(tx_hash).awaiting_confirmations is False
        assert "eth_getBlockByNumber" in primary.seen
