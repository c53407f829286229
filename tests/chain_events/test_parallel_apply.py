"""Ranges applied in two transactions at once (chain_events.lanes.ApplyLanes).

These tests commit for real (transactional_db): the apply lanes are threads with their own
database connections, which only see committed rows. One-block ranges make every payment,
completion and cancellation its own range, so consecutive ranges share bookings.
"""
from __future__ import annotations

import threading

import pytest
from django.db import DatabaseError, connection

from chain_events import lanes
from chain_events.models import ChainEvent, EventStatus, SyncCursor
from escrow.models import Booking, BookingStatus, BookingStatusChange, PlatformFee, ProviderEarnings, SignatureNonce

from .conftest import Flow, scan

pytestmark = [pytest.mark.chain]


@pytest.fixture
def lanes_flow(chain_settings, transactional_db, settings):
    settings.CHAIN_APPLY_PARALLEL = True
    settings.CHAIN_LOG_RANGE_MAX = 1  # one block per range
    return Flow(chain_settings)


@pytest.fixture
def lane_threads(monkeypatch):
    """(thread name, first block) of every range applied."""
    seen: list[tuple[str, int]] = []
    apply_range = lanes._apply_range

    def recording(contract, cursor_pk, fetched, *args, **kwargs):
        seen.append((threading.current_thread().name, fetched.from_block))
        return apply_range(contract, cursor_pk, fetched, *args, **kwargs)

    monkeypatch.setattr(lanes, "_apply_range", recording)
    return seen


def _block(receipt: dict) -> int:
    number = receipt["blockNumber"]
    return int(number, 16) if isinstance(number, str) else int(number)


def test_consecutive_ranges_in_two_lanes_apply_every_event_once(lanes_flow, lane_threads):
    flow = lanes_flow
    paid = [flow.paid_booking(customer=i % 6)[0] for i in range(6)]
    first = scan()
    assert first.logs == 6
    flow.cancel(paid[1])
    # Paid and completed in consecutive blocks: two ranges in flight with the same booking.
    completed, _ = flow.paid_booking(customer=1, provider="p2")
    flow.complete(completed)
    flow.complete(paid[0])

    report = scan()

    assert {name.rsplit("_", 1)[0] for name, _ in lane_threads} == {"scan-apply-0", "scan-apply-1"}
    assert first.ranges + report.ranges == len(lane_threads)
    assert report.logs == 4 and report.inserted == 4
    statuses = dict(Booking.objects.values_list("pk", "status"))
    assert statuses[completed.pk] == statuses[paid[0].pk] == BookingStatus.COMPLETED
    assert statuses[paid[1].pk] == BookingStatus.CANCELLED
    assert [statuses[b.pk] for b in paid[2:]] == [BookingStatus.PAID] * 4
    assert ChainEvent.objects.filter(status=EventStatus.PROCESSED).count() == 10
    # → PAID for 7, → COMPLETED for 2, → CANCELLED for 1.
    assert BookingStatusChange.objects.filter(source="chain").count() == 10
    assert PlatformFee.objects.count() == 2 + (1 if _cancellation_keeps_a_fee(paid[1]) else 0)
    assert sum(ProviderEarnings.objects.values_list("services_completed", flat=True)) == 2
    assert SignatureNonce.objects.filter(consumed_at__isnull=False).count() == 7 + 1
    cursor = SyncCursor.objects.get()
    assert cursor.last_block == report.cursor

    again = scan()
    assert again.inserted == 0 and again.bookings == 0
    assert BookingStatusChange.objects.filter(source="chain").count() == 10
    assert sum(ProviderEarnings.objects.values_list("services_completed", flat=True)) == 2


def _cancellation_keeps_a_fee(booking: Booking) -> bool:
    split = Booking.objects.get(pk=booking.pk).chain_data["cancellation"]
    return int(split["platformAmount"]) + int(split["inviterAmount"]) > 0


def test_a_failing_range_rolls_back_the_range_in_flight_after_it_and_the_rescan_applies_once(
    lanes_flow, lane_threads
):
    flow = lanes_flow
    receipts = [flow.paid_booking(customer=i % 6)[1] for i in range(6)]
    broken = _block(receipts[2])
    # The cursor update of the range ending at the third payment's block fails in PostgreSQL,
    # after its events and booking changes were written; the next range is already in flight
    # in the other lane (it locked its booking and wrote it, and waits for its turn).
    with connection.cursor() as c:
        c.execute(f"""
            CREATE FUNCTION test_crash() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(0.5); RAISE EXCEPTION 'injected crash before commit'; END $$;
            CREATE TRIGGER test_crash BEFORE UPDATE ON chain_events_synccursor
            FOR EACH ROW WHEN (NEW.last_block = {broken}) EXECUTE FUNCTION test_crash();
        """)
    try:
        with pytest.raises(DatabaseError, match="injected crash"):
            scan()
        # The range after the broken one was being applied in the other lane meanwhile.
        assert any(first > broken for _, first in lane_threads)
        assert SyncCursor.objects.get().last_block == broken - 1
        assert not ChainEvent.objects.filter(block_number__gte=broken).exists()
        assert ChainEvent.objects.filter(block_number__lt=broken).count() == 2
        assert Booking.objects.filter(status=BookingStatus.PAID).count() == 2
        assert BookingStatusChange.objects.filter(source="chain").count() == 2
        assert SignatureNonce.objects.filter(consumed_at__isnull=False).count() == 2
    finally:
        with connection.cursor() as c:
            c.execute("DROP TRIGGER test_crash ON chain_events_synccursor; DROP FUNCTION test_crash();")

    scan()
    scan()
    assert ChainEvent.objects.filter(status=EventStatus.PROCESSED).count() == 6
    assert Booking.objects.filter(status=BookingStatus.PAID).count() == 6
    assert BookingStatusChange.objects.filter(source="chain").count() == 6
    assert SignatureNonce.objects.filter(consumed_at__isnull=False).count() == 6


def test_a_cursor_moved_by_staff_mid_scan_makes_the_range_roll_back(lanes_flow, monkeypatch):
    """The cursor update continues only from the block before the range: a range whose
    starting point moved (staff rewound the cursor while it was being applied) rolls back,
    and the scan goes on from where the cursor now is."""
    flow = lanes_flow
    bookings = [flow.paid_booking(customer=i)[0] for i in range(3)]
    apply_range = lanes._apply_range
    rewound = []

    def rewinding(contract, cursor_pk, fetched, *args, **kwargs):
        if not rewound and fetched.logs:
            rewound.append(fetched.from_block)
            # What rewind_cursor does, committed from another connection before this range's update.
            SyncCursor.objects.filter(pk=cursor_pk).update(last_block=fetched.from_block - 2)
        return apply_range(contract, cursor_pk, fetched, *args, **kwargs)

    monkeypatch.setattr(lanes, "_apply_range", rewinding)
    scan()
    assert rewound
    assert set(Booking.objects.filter(pk__in=[b.pk for b in bookings]).values_list("status", flat=True)) == {
        BookingStatus.PAID
    }
    assert ChainEvent.objects.count() == 3
    assert BookingStatusChange.objects.filter(source="chain").count() == 3


def test_a_lone_range_following_the_head_is_applied_in_line(lanes_flow, lane_threads, settings):
    settings.CHAIN_LOG_RANGE_MAX = 10_000
    scan()  # catch up to the head first
    booking, _ = lanes_flow.paid_booking()
    lane_threads.clear()
    report = scan()
    assert report.ranges == 1 and report.bookings == 1
    assert [name for name, _ in lane_threads] == [threading.current_thread().name]
    assert Booking.objects.get(pk=booking.pk).status == BookingStatus.PAID
