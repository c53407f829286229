"""The scanner under failure: reorgs, a crash before commit, bad RPC endpoints, failing handlers."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
from django.db import DatabaseError, connection, connections
from eth_utils import keccak

from chain_events import ingest, scanner, services
from chain_events.cursor import indexed_contract, rewind_cursor, scan_lock
from chain_events.models import BlockHash, ChainEvent, EventStatus, SyncCursor
from chain_events.rpc import RpcError, get_rpc_client
from escrow.fastpath import process_transaction
from escrow.models import Booking, BookingStatus, BookingStatusChange, PlatformFee, ProviderEarnings, SignatureNonce
from tests.rpc_proxy import RpcProxy

from .conftest import scan

pytestmark = [pytest.mark.chain, pytest.mark.django_db]


def statuses(booking) -> list[str]:
    return list(booking.status_changes.filter(source="chain").values_list("to_status", flat=True))


# -- reorgs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 3, 10])
def test_reorg_dropping_a_payment_returns_booking_to_pending_then_paid_once(flow, depth):
    chain = flow.chain
    booking, receipt = flow.paid_booking()
    if depth > 1:
        chain.mine(depth - 1)  # the payment's block is now `depth` blocks from the head
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID

    chain.rpc("anvil_reorg", [depth, []])  # replace the last `depth` blocks with empty ones
    assert chain.rpc("eth_getTransactionReceipt", [receipt["transactionHash"].to_0x_hex()]) is None
    report = scan()
    assert report.reorgs == [depth]
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT
    assert booking.payment_tx_hash == "" and booking.chain_confirmed_at is None
    assert ChainEvent.objects.get().status == EventStatus.REMOVED
    assert SignatureNonce.objects.get(booking=booking).consumed_at is None  # released with the payment

    flow.pay(booking)  # the customer pays again (a fresh authorization)
    scan()
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID
    assert statuses(booking) == [BookingStatus.PAID, BookingStatus.PENDING_PAYMENT, BookingStatus.PAID]
    assert ChainEvent.objects.filter(status=EventStatus.PROCESSED).count() == 1
    assert not PlatformFee.objects.exists() and not ProviderEarnings.objects.exists()
    # The window holds the new chain's hashes.
    head = chain.w3.eth.get_block("latest")
    assert BlockHash.objects.get(number=head["number"]).hash == head["hash"].to_0x_hex()


def test_reorg_dropping_a_completion_reverses_fee_and_earnings_exactly(flow):
    chain = flow.chain
    booking, _ = flow.paid_booking(amount=100 * 10**6)
    flow.complete(booking)
    chain.mine(1)
    scan()
    assert ProviderEarnings.objects.get().total_earned == 90 * 10**6
    chain.rpc("anvil_reorg", [3, []])  # drops payment and completion
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT
    assert not PlatformFee.objects.exists()
    earnings = ProviderEarnings.objects.get()
    assert (earnings.total_earned, earnings.services_completed) == (0, 0)

    flow.pay(booking)
    flow.complete(booking)
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.COMPLETED
    assert PlatformFee.objects.get().platform_amount == 10 * 10**6
    earnings.refresh_from_db()
    assert (earnings.total_earned, earnings.services_completed) == (90 * 10**6, 1)


def test_reorg_deeper_than_the_window_halts_the_scanner(flow, settings):
    # anvil's `finalized` tag is head - 64: the window is the last 64 blocks.
    settings.REORG_WINDOW = 2
    chain = flow.chain
    chain.mine(70)
    booking, _ = flow.paid_booking()
    chain.mine(10)
    scan()
    assert BlockHash.objects.count() == 64
    # A transfer in the first replaced block: 70 new empty blocks can hash exactly as the old
    # empty ones did (same parent, same timestamps), which would make the reorg shallower.
    deployer = chain.accounts.deployer.address
    chain.rpc("anvil_reorg", [70, [[{"from": deployer, "to": deployer, "value": "0x1"}, 0]]])
    report = scan()
    assert report.halted
    cursor = SyncCursor.objects.get()
    assert cursor.halted and "below the unfinalized window" in cursor.halt_reason
    assert scan().halted  # stays halted until staff rewind
    with pytest.raises(ValueError, match="moves back only"):  # would skip blocks for good
        rewind_cursor(SyncCursor.objects.get().last_block + 5, reason="typo")
    assert SyncCursor.objects.get().halted
    rewind_cursor(chain.start_block, reason="checked the explorer")
    report = scan()
    assert not report.halted and report.removed == 1  # the rescan finds the payment gone
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT


# -- crash before commit ------------------------------------------------------------------------
def test_crash_after_event_rows_written_before_commit_rescans_exactly_once(flow):
    bookings = [flow.paid_booking(customer=i)[0] for i in range(3)]
    flow.complete(bookings[0])
    # Fault injected in PostgreSQL itself: the cursor update, the range transaction's last
    # statement (after the event rows, booking changes and block hashes), fails.
    with connection.cursor() as c:
        c.execute("""
            CREATE FUNCTION test_crash() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected crash before commit'; END $$;
            CREATE TRIGGER test_crash BEFORE UPDATE ON chain_events_synccursor
            FOR EACH ROW WHEN (NEW.last_block <> OLD.last_block) EXECUTE FUNCTION test_crash();
        """)
    with pytest.raises(DatabaseError, match="injected crash"):
        scan()
    assert not ChainEvent.objects.exists()
    assert set(Booking.objects.values_list("status", flat=True)) == {BookingStatus.PENDING_PAYMENT}
    assert not BookingStatusChange.objects.filter(source="chain").exists()
    with connection.cursor() as c:
        c.execute("DROP TRIGGER test_crash ON chain_events_synccursor; DROP FUNCTION test_crash();")
    scan()
    scan()
    assert ChainEvent.objects.filter(status=EventStatus.PROCESSED).count() == 4
    assert BookingStatusChange.objects.filter(source="chain").count() == 4
    assert PlatformFee.objects.count() == 1
    assert ProviderEarnings.objects.get().services_completed == 1


# -- RPC endpoints ------------------------------------------------------------------------------
def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_primary_rpc_down_fails_over_and_keeps_scanning(flow, settings):
    settings.CHAIN_RPC_URLS = [closed_port_url(), flow.chain.url]
    booking, _ = flow.paid_booking()
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID
    primary, backup = get_rpc_client().health()
    assert primary["total_failures"] >= 1 and not primary["healthy"]
    assert backup["healthy"]


@pytest.mark.parametrize("mode", ["garbage", "not-json"])
def test_primary_rpc_answering_garbage_fails_over(flow, settings, mode):
    with RpcProxy(mode=mode) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url, flow.chain.url]
        booking, _ = flow.paid_booking()
        scan()
        booking.refresh_from_db()
        assert booking.status == BookingStatus.PAID
        assert proxy.requests >= 1
        flow.complete(booking)
        scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.COMPLETED
    assert get_rpc_client().health()[0]["total_failures"] >= 1


@pytest.mark.parametrize("with_backup", [True, False], ids=["backup-up-to-date", "only-the-lagging-node"])
def test_a_node_behind_the_cursor_is_not_a_reorg(flow, settings, with_backup):
    """A lagging node (its head below our cursor, the cursor's block unknown to it) must not
    roll back events that are still canonical: it is failed over, or the pass waits."""
    with RpcProxy(flow.chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url, flow.chain.url] if with_backup else [proxy.url]
        booking, _ = flow.paid_booking()
        flow.chain.mine(3)
        scan()
        cursor = SyncCursor.objects.get()
        booking.refresh_from_db()
        assert booking.status == BookingStatus.PAID and cursor.last_block == flow.chain.block_number()
        proxy.lag_blocks = 5  # 5 blocks behind: the payment's block is above its head
        if with_backup:
            report = scanner.scan_chain()
            assert report.removed == 0 and not report.errors
            assert not get_rpc_client().health()[0]["healthy"]
        else:
            with pytest.raises(RpcError, match="behind"):
                scanner.scan_chain()
        assert not ChainEvent.objects.filter(status=EventStatus.REMOVED).exists()
        booking.refresh_from_db()
        assert booking.status == BookingStatus.PAID and statuses(booking) == ["PAID"]
        assert booking.signatures.get().consumed_at is not None
        after = SyncCursor.objects.get()
        assert not after.halted and after.last_block >= cursor.last_block
        proxy.lag_blocks = 0  # caught up: scanning goes on where it was
        flow.complete(booking)
        scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.COMPLETED and statuses(booking) == ["PAID", "COMPLETED"]
    assert PlatformFee.objects.filter(booking=booking).count() == 1
    assert ProviderEarnings.objects.get().services_completed == 1


@pytest.mark.parametrize("block_is", ["in the window", "final"])
def test_an_answer_lacking_a_fast_path_log_of_a_block_still_on_chain_removes_nothing(flow, settings, block_is):
    """A node that has not indexed a block yet answers eth_getLogs without its logs. The row the
    fast path stored from that block is still canonical (its block hash is): marking it REMOVED
    would take the payment away from the booking. The range is refused and scanned again.
    A block already final when the scanner reaches it (the scanner was down a while) has no
    header in the window: its hash is fetched to tell."""
    scan()
    cursor_before = SyncCursor.objects.get().last_block
    booking, receipt = flow.paid_booking()
    process_transaction(receipt["transactionHash"].to_0x_hex())
    if block_is == "final":
        settings.REORG_WINDOW = 2
        flow.chain.mine(70)  # past anvil's `finalized` (head - 64) too
    with RpcProxy(flow.chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.empty_logs = True
        with pytest.raises(RpcError, match="incomplete answer"):
            scanner.scan_chain()
        assert SyncCursor.objects.get().last_block == cursor_before
        assert ChainEvent.objects.get().status == EventStatus.PROCESSED
        proxy.empty_logs = False
        report = scan()
    assert report.removed == 0 and report.logs == 1
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID and statuses(booking) == ["PAID"]
    assert booking.signatures.get().consumed_at is not None


def test_an_endpoint_that_answered_without_a_stored_log_is_avoided_by_the_next_pass(flow, settings):
    """The node that left the log out (a primary stuck behind on its log index) cools down like
    one that answered garbage: the next pass asks the fallback instead of being refused by the
    same node beat after beat."""
    scan()
    booking, receipt = flow.paid_booking()
    process_transaction(receipt["transactionHash"].to_0x_hex())
    with RpcProxy(flow.chain.url) as primary:
        settings.CHAIN_RPC_URLS = [primary.url, flow.chain.url]
        primary.empty_logs = True
        with pytest.raises(RpcError, match="incomplete answer"):
            scanner.scan_chain()
        health = {e["endpoint"]: e for e in get_rpc_client().health()}
        assert not health[primary.url]["healthy"]
        report = scan()
    assert report.removed == 0 and report.logs == 1
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID and statuses(booking) == ["PAID"]


def test_replay_removes_a_row_only_when_its_block_left_the_chain(flow, settings):
    """Replay runs over old blocks too, outside the window of held hashes: an answer that lacks
    a stored log is checked against the block's canonical hash before anything is removed."""
    chain = flow.chain
    scan()
    booking, receipt = flow.paid_booking()
    process_transaction(receipt["transactionHash"].to_0x_hex())  # a block the scanner holds no hash of
    with RpcProxy(chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        proxy.empty_logs = True
        with pytest.raises(RpcError, match="incomplete answer"):
            services.replay_range(chain.start_block)
        booking.refresh_from_db()
        assert booking.status == BookingStatus.PAID and ChainEvent.objects.get().status == EventStatus.PROCESSED
        proxy.empty_logs = False
        chain.rpc("anvil_reorg", [1, []])  # now the payment's block really is replaced
        assert services.replay_range(chain.start_block).removed == 1
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT and ChainEvent.objects.get().status == EventStatus.REMOVED


def test_range_refused_by_provider_uses_its_suggested_range(flow, settings):
    with RpcProxy(flow.chain.url, max_log_blocks=3) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        bookings = [flow.paid_booking(customer=i % 6)[0] for i in range(6)]
        report = scan()
    assert report.range_shrinks >= 1
    assert SyncCursor.objects.get().range_size <= 6  # 3 suggested, may have grown once since
    assert set(Booking.objects.filter(pk__in=[b.pk for b in bookings]).values_list("status", flat=True)) == {
        BookingStatus.PAID
    }


def test_too_many_results_refetches_smaller(flow, settings):
    settings.CHAIN_LOG_MAX_RESULTS = 10
    scan()  # a cursor that scanned before: no first-scan probe, the next range is asked for whole
    SyncCursor.objects.update(range_size=1000)
    for i in range(12):
        flow.paid_booking(customer=i % 6)
    report = scan()
    assert report.range_shrinks >= 1
    assert report.logs == 12
    assert Booking.objects.filter(status=BookingStatus.PAID).count() == 12


def test_a_refused_single_block_ends_the_pass_instead_of_asking_again_at_once(flow, settings):
    """A node that refuses even a one-block range (here: every range): nothing smaller can be
    asked, so the refusal is raised (the next beat tries again), not repeated until the pass's
    deadline. Nothing is applied and the cursor stays before the refused block."""
    booking, _ = flow.paid_booking()
    start = SyncCursor.objects.filter().values_list("last_block", flat=True).first()
    with RpcProxy(flow.chain.url, max_log_blocks=0) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        with pytest.raises(RpcError, match="query returned more than"):
            scanner.scan_chain(max_seconds=30)
        assert proxy.seen.count("eth_getLogs") < 20  # shrunk to one block, asked once more, given up
    cursor = SyncCursor.objects.get()
    assert start is None or cursor.last_block == start
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT and not ChainEvent.objects.exists()
    settings.CHAIN_RPC_URLS = [flow.chain.url]  # a node that answers: scanning goes on
    scan()
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID


def test_a_rate_limit_fails_over_and_is_not_a_range_refusal():
    from chain_events.rpc import RpcResponseError, _should_fail_over

    assert _should_fail_over(RpcResponseError("project ID request rate exceeded", code=-32005))
    assert not _should_fail_over(RpcResponseError("query returned more than 10000 results", code=-32005))


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_answer_over_the_byte_limit_is_dropped_and_the_range_refetched_smaller(flow, settings, declare_length):
    scan()  # a cursor that scanned before: no first-scan probe, the next range is asked for whole
    SyncCursor.objects.update(range_size=1000)
    bookings = [flow.paid_booking(customer=i % 6)[0] for i in range(12)]
    limit = 6_000  # a log is ~1 KB of JSON: the 12-block range is over it, a block or two is not
    settings.CHAIN_LOG_MAX_ANSWER_BYTES = limit
    with RpcProxy(flow.chain.url, declare_length=declare_length) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        report = scan()
        health = get_rpc_client().health()
    assert max(proxy.answer_sizes) > limit  # the whole range was asked for first, and refused
    assert report.range_shrinks >= 1
    assert report.logs == 12
    assert set(Booking.objects.filter(pk__in=[b.pk for b in bookings]).values_list("status", flat=True)) == {
        BookingStatus.PAID
    }
    assert ChainEvent.objects.filter(status=EventStatus.PROCESSED).count() == 12
    assert BookingStatusChange.objects.filter(source="chain", to_status=BookingStatus.PAID).count() == 12
    assert SyncCursor.objects.get().last_block == flow.chain.block_number()
    # The size of an answer is the range's doing, not the endpoint's: no failure counted, no failover.
    assert health[0]["total_failures"] == 0


def test_replay_over_the_byte_limit_refetches_smaller_and_applies_once(flow, settings):
    bookings = [flow.paid_booking(customer=i % 6)[0] for i in range(12)]
    settings.CHAIN_LOG_MAX_ANSWER_BYTES = 6_000  # replay starts with the default range (1,000 blocks)
    with RpcProxy(flow.chain.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        first = services.replay_range(flow.chain.start_block)
        again = services.replay_range(flow.chain.start_block)
    assert max(proxy.answer_sizes) > 6_000  # the whole range was asked for first, and refused
    assert first.logs == again.logs == 12 and again.inserted == 0
    assert set(Booking.objects.filter(pk__in=[b.pk for b in bookings]).values_list("status", flat=True)) == {
        BookingStatus.PAID
    }
    assert ChainEvent.objects.count() == 12
    assert BookingStatusChange.objects.filter(source="chain", to_status=BookingStatus.PAID).count() == 12


# -- failing handlers -----------------------------------------------------------------------------
def _break_booking_updates(booking_id: int) -> None:
    with connection.cursor() as c:
        c.execute(f"""
            CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected handler failure'; END $$;
            CREATE TRIGGER test_refuse BEFORE UPDATE ON escrow_booking
            FOR EACH ROW WHEN (OLD.id = {int(booking_id)}) EXECUTE FUNCTION test_refuse();
        """)


def _repair_booking_updates() -> None:
    with connection.cursor() as c:
        c.execute("DROP TRIGGER test_refuse ON escrow_booking; DROP FUNCTION test_refuse();")


def test_failing_handler_backs_off_then_dead_letters_without_blocking_others(flow, settings):
    settings.CHAIN_EVENT_RETRY_BASE_SECONDS = 30
    bad, _ = flow.paid_booking(customer=0)
    good, _ = flow.paid_booking(customer=1)
    _break_booking_updates(bad.pk)
    report = scan()
    assert report.failed_events == 1
    good.refresh_from_db()
    assert good.status == BookingStatus.PAID  # the other event went through
    assert SyncCursor.objects.get().last_block == flow.chain.block_number()  # the cursor moved on
    event = ChainEvent.objects.get(chain_booking_id=bad.chain_booking_id)
    assert (event.status, event.retry_count) == (EventStatus.FAILED, 1)
    assert "injected handler failure" in event.last_error
    delays = [event.next_retry_at - event.updated_at]

    for attempt in range(2, 6):
        due = event.next_retry_at
        assert ingest.retry_failed_events(now=due - timedelta(seconds=1)).attempted == 0  # not due yet
        result = ingest.retry_failed_events(now=due)
        assert result.attempted == 1
        event.refresh_from_db()
        assert event.retry_count == attempt
        if attempt < 5:
            assert event.status == EventStatus.FAILED
            delays.append(event.next_retry_at - event.updated_at)
    assert event.status == EventStatus.DEAD_LETTER and event.next_retry_at is None
    assert [d.total_seconds() for d in delays] == [30, 60, 120, 240]  # exponential backoff
    assert list(services.open_dead_letters()) == [event]
    bad.refresh_from_db()
    assert bad.status == BookingStatus.PENDING_PAYMENT

    # Staff fix the cause and retry from the admin: applied once.
    _repair_booking_updates()
    assert services.request_retry([event.pk], actor="staff@example.com") == 1
    assert ingest.retry_failed_events().processed == 1
    event.refresh_from_db()
    bad.refresh_from_db()
    assert event.status == EventStatus.PROCESSED
    assert bad.status == BookingStatus.PAID and statuses(bad) == [BookingStatus.PAID]
    assert ingest.retry_failed_events().attempted == 0


def test_dead_letter_resolved_by_staff_needs_a_reason(flow, settings):
    settings.CHAIN_EVENT_MAX_ATTEMPTS = 1
    bad, _ = flow.paid_booking()
    _break_booking_updates(bad.pk)
    scan()
    event = ChainEvent.objects.get()
    assert event.status == EventStatus.DEAD_LETTER
    with pytest.raises(services.EventNotResolvable):
        services.resolve_event(event, "staff@example.com", "  ")
    event = services.resolve_event(event, "staff@example.com", "refunded by hand, see ticket 12")
    assert (event.resolved_by, event.resolution_note) == ("staff@example.com", "refunded by hand, see ticket 12")
    assert event.resolved_at is not None and not services.open_dead_letters().exists()
    _repair_booking_updates()


def test_replay_reapplies_dead_letters_and_is_idempotent(flow, settings):
    settings.CHAIN_EVENT_MAX_ATTEMPTS = 1
    bad, _ = flow.paid_booking()
    _break_booking_updates(bad.pk)
    scan()
    _repair_booking_updates()
    first = services.replay_range(flow.chain.start_block)
    second = services.replay_range(flow.chain.start_block, flow.chain.block_number())
    assert first.logs == second.logs == 1 and first.inserted == second.inserted == 0
    bad.refresh_from_db()
    assert bad.status == BookingStatus.PAID and statuses(bad) == [BookingStatus.PAID]
    assert ChainEvent.objects.get().status == EventStatus.PROCESSED


@contextmanager
def _another_writer_holding(booking, event, hold_seconds: float):
    """Another writer (a retry, the fast path) in its lock order: the booking first, then,
    after `hold_seconds`, one of its event rows. The body runs once the booking is held;
    yields the errors the other writer met (a deadlock aborts one side)."""
    db = connection.settings_dict
    other = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])
    locked, errors = threading.Event(), []

    def run():
        try:
            with other.transaction():
                other.execute(f"SELECT id FROM {Booking._meta.db_table} WHERE id = %s FOR UPDATE", [booking.pk])
                locked.set()
                time.sleep(hold_seconds)  # the body starts meanwhile and waits for a lock
                other.execute(f"UPDATE {ChainEvent._meta.db_table} SET updated_at = now() WHERE id = %s",
                              [event.pk])
        except Exception as exc:
            errors.append(exc)
        finally:
            other.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert locked.wait(10)
        yield errors
    finally:
        thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_retrying_a_failed_event_while_the_scanner_applies_its_booking_does_not_deadlock(flow, settings):
    """The scanner applying a new event of a booking holds the booking's lock and then writes
    the booking's unsettled event rows (marked processed with it). A retry of that booking's
    failed event must take the locks in the same order, or the two wait on each other and
    PostgreSQL aborts one of them."""
    bad, _ = flow.paid_booking()
    _break_booking_updates(bad.pk)
    scan()
    _repair_booking_updates()
    event = ChainEvent.objects.get(chain_booking_id=bad.chain_booking_id)
    assert event.status == EventStatus.FAILED
    with _another_writer_holding(bad, event, hold_seconds=0.5) as errors:
        report = ingest.retry_failed_events(now=event.next_retry_at)
    assert errors == []
    assert (report.attempted, report.processed) == (1, 1)
    bad.refresh_from_db()
    event.refresh_from_db()
    assert bad.status == BookingStatus.PAID and statuses(bad) == [BookingStatus.PAID]
    assert event.status == EventStatus.PROCESSED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stored_by", ["scanner", "fast path"])
def test_removing_rows_of_a_dropped_block_while_another_writer_holds_the_booking_does_not_deadlock(
    flow, stored_by
):
    """A reorg rollback (rows the scanner stored) and a range finding fast-path rows stale both
    mark event rows REMOVED and then re-derive their bookings. Every other writer takes the
    booking first and its event rows after: the removal must lock in that order too, or the
    two wait on each other and PostgreSQL aborts one of them."""
    chain = flow.chain
    if stored_by == "fast path":
        scan()
    booking, receipt = flow.paid_booking()
    if stored_by == "scanner":
        scan()
    else:
        process_transaction(receipt["transactionHash"].to_0x_hex())
    event = ChainEvent.objects.get(chain_booking_id=booking.chain_booking_id)
    chain.rpc("anvil_reorg", [1, []])  # the payment's block is replaced; the payment is gone
    with _another_writer_holding(booking, event, hold_seconds=1.0) as errors:
        report = scan()
    assert errors == []
    assert report.reorgs == ([1] if stored_by == "scanner" else []) and report.removed == 1
    booking.refresh_from_db()
    event.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT and statuses(booking) == ["PAID", "PENDING_PAYMENT"]
    assert event.status == EventStatus.REMOVED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("caller", ["replay", "fast path"])
def test_storing_a_log_again_while_another_writer_holds_the_booking_does_not_deadlock(flow, caller):
    """Replay, reconciliation and the fast path meet rows stored already, and the upsert that
    stores a log locks its existing row. Those callers lock the bookings first, the order every
    other writer (a retry, the scanner applying) takes, or the two wait on each other."""
    booking, receipt = flow.paid_booking()
    scan()
    event = ChainEvent.objects.get(chain_booking_id=booking.chain_booking_id)
    with _another_writer_holding(booking, event, hold_seconds=1.0) as errors:
        if caller == "replay":
            services.replay_range(flow.chain.start_block)
        else:
            process_transaction(receipt["transactionHash"].to_0x_hex())
    assert errors == []
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID and statuses(booking) == ["PAID"]
    assert ChainEvent.objects.get().status == EventStatus.PROCESSED


@pytest.mark.django_db(transaction=True)
def test_the_scanner_meeting_a_fast_path_row_while_another_writer_holds_the_booking_does_not_deadlock(flow):
    """Near the head the scanner's ranges often hold logs the fast path stored already. Storing
    the range must not lock those rows (before the booking, which a new event of the same
    booking in the range makes the scanner lock): a writer holding the booking and writing
    that row would wait on the scanner while the scanner waits on it."""
    scan()
    booking, receipt = flow.paid_booking()
    process_transaction(receipt["transactionHash"].to_0x_hex())
    flow.complete(booking)  # a new event of the same booking, in the same range
    event = ChainEvent.objects.get(chain_booking_id=booking.chain_booking_id)
    with _another_writer_holding(booking, event, hold_seconds=1.0) as errors:
        report = scan()
    assert errors == []
    assert report.inserted == 1
    booking.refresh_from_db()
    assert booking.status == BookingStatus.COMPLETED and statuses(booking) == ["PAID", "COMPLETED"]
    assert PlatformFee.objects.filter(booking=booking).count() == 1


def _scan_lock_key(contract) -> int:
    """The advisory lock key scans have always taken (a worker still running the code before a
    deploy and one running the code after must exclude each other)."""
    digest = keccak(text=f"bookme-scan:{contract.chain_id}:{contract.contract}")
    return int.from_bytes(digest[:8], "big", signed=True)


def test_a_second_scan_while_one_runs_is_skipped(flow):
    contract = indexed_contract()
    with scan_lock(contract) as held:
        assert held
        # A second worker (its own database session) finds the lock taken.
        other = connections.create_connection("default")
        try:
            with other.cursor() as c:
                c.execute("SELECT pg_try_advisory_lock(%s)", [_scan_lock_key(contract)])
                assert c.fetchone()[0] is False
        finally:
            other.close()
        assert scanner.scan_chain().skipped


def test_a_scan_waiting_for_the_lock_takes_over_when_the_holder_ends(flow):
    """The beat's next scan waits for the following one instead of leaving a gap until the beat after."""
    key = _scan_lock_key(indexed_contract())
    db = connection.settings_dict
    # A plain psycopg session: another worker holding the lock, released from another thread.
    holder = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        assert scanner.scan_chain(lock_wait_seconds=0.3).skipped  # gives up after its wait

        def release_soon():
            time.sleep(0.6)
            holder.execute("SELECT pg_advisory_unlock(%s)", [key])

        releaser = threading.Thread(target=release_soon)
        releaser.start()
        report = scanner.scan_chain(lock_wait_seconds=5)
        releaser.join()
        assert not report.skipped and report.head is not None
    finally:
        holder.close()


def _scan_fails_and_leaves_everything(booking, cursor_before: int) -> None:
    """With the booking's rebuild failing, a scan raises and changes nothing: still PAID, its
    event still PROCESSED, the cursor where it was."""
    _break_booking_updates(booking.pk)
    try:
        with pytest.raises(DatabaseError):
            scanner.scan_chain()
        booking.refresh_from_db()
        assert booking.status == BookingStatus.PAID
        assert ChainEvent.objects.get().status == EventStatus.PROCESSED
        cursor = SyncCursor.objects.get()
        assert cursor.last_block == cursor_before
        # Why the scanner is stuck is on the cursor (console, health), not only a growing lag.
        assert "injected handler failure" in cursor.last_error and cursor.last_error_at is not None
    finally:
        _repair_booking_updates()


def test_a_reorg_rollback_that_cannot_rebuild_a_booking_leaves_everything_for_the_next_pass(flow):
    """No event is left to mark FAILED for a booking whose rebuild fails during a rollback, so
    the rollback is all or nothing: the booking never keeps money the chain no longer shows."""
    chain = flow.chain
    booking, _ = flow.paid_booking()
    scan()
    cursor_before = SyncCursor.objects.get().last_block
    chain.rpc("anvil_reorg", [1, []])
    _scan_fails_and_leaves_everything(booking, cursor_before)
    report = scan()
    assert report.reorgs == [1]
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT
    assert ChainEvent.objects.get().status == EventStatus.REMOVED


def test_a_removed_fast_path_payment_whose_rebuild_fails_is_not_lost(flow):
    """The fast path applied a payment ahead of the cursor; its block then left the chain. The
    range that finds the row stale has no new row to mark FAILED for that booking: a failed
    rebuild rolls the range back (the next pass tries again) instead of leaving it PAID."""
    chain = flow.chain
    scan()
    cursor_before = SyncCursor.objects.get().last_block
    booking, receipt = flow.paid_booking()
    process_transaction(receipt["transactionHash"].to_0x_hex())
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID
    chain.rpc("anvil_reorg", [1, []])  # the payment's block is replaced; the payment is gone
    _scan_fails_and_leaves_everything(booking, cursor_before)
    report = scan()
    assert report.removed == 1
    assert SyncCursor.objects.get().last_error == ""  # a pass that completes clears it
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PENDING_PAYMENT and statuses(booking) == ["PAID", "PENDING_PAYMENT"]
    assert ChainEvent.objects.get().status == EventStatus.REMOVED
    assert booking.signatures.get().consumed_at is None  # the nonce is free again
