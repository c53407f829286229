"""The receipt fast path against the scanner, in two real transactions on PostgreSQL (issue 17, defect 3).

Both store the same log and apply the same booking. The fast path used to lock the booking and
then insert the log, waiting on the scanner's uncommitted insert of it, while the scanner waited
for the booking: a deadlock, answered 500. Now every writer inserts first and locks bookings
after (chain_events.ingest, "THE LOCK ORDER"), and a database conflict that still reaches a view
is a 503 with Retry-After.

These tests commit for real (transactional_db): each side runs in its own thread and connection.
"""
from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from chain_events import scanner
from chain_events.models import ChainEvent
from escrow import chain_effects
from escrow.models import Booking, BookingStatusChange
from escrow.signing import sign_payment_authorization
from tests.escrow.helpers import wallet_client

pytestmark = [pytest.mark.chain]

_DEADLINE_SECONDS = 10


@pytest.fixture
def paid_booking(chain_settings, transactional_db, settings, make_booking, provider):
    """A booking paid on anvil, nothing of it stored yet: (booking, the customer's API client, payment tx hash)."""
    settings.CHAIN_APPLY_PARALLEL = False  # the scanner applies in its own thread only
    customer = chain_settings.accounts.customers[0]
    booking = make_booking(customer, provider)
    auth = sign_payment_authorization(booking)
    receipt = chain_settings.pay_booking(auth.message, auth.signature, customer.address)
    return booking, wallet_client(customer), receipt["transactionHash"].to_0x_hex()


def _submit(client, booking, tx_hash):
    return client.post(
        f"/api/bookings/{booking.uuid}/submit-transaction/", {"tx_hash": tx_hash}, format="json"
    )


def _waiting_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def _poll(predicate, what: str) -> None:
    deadline = time.monotonic() + _DEADLINE_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_scanner_and_fast_path_storing_the_same_log_at_once_both_finish(paid_booking, monkeypatch):
    """The scanner has inserted the payment's log (not committed) and is about to lock the booking;
    the client reports the same payment. The fast path must wait for the scanner's commit without
    holding the booking, then find the log stored and the booking PAID: no deadlock, no 5xx."""
    booking, customer, tx_hash = paid_booking
    lock_bookings = chain_effects.lock_bookings
    scanner_inserted, resume_scanner = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def scanner_pausing_before_its_booking_locks(keys):
        if threading.current_thread().name == "scanner" and not resume_scanner.is_set():
            scanner_inserted.set()  # its range's rows are inserted, uncommitted
            resume_scanner.wait(_DEADLINE_SECONDS)
        return lock_bookings(keys)

    monkeypatch.setattr(chain_effects, "lock_bookings", scanner_pausing_before_its_booking_locks)

    def run(name, work):
        try:
            results[name] = work()
        except Exception as exc:  # reported by the assertions below
            results[name] = exc
        finally:
            connection.close()

    def fast_path():
        connection.ensure_connection()
        results["fast_path_pid"] = connection.connection.info.backend_pid
        return _submit(customer, booking, tx_hash)

    scan = threading.Thread(target=run, args=("scan", scanner.scan_chain), name="scanner")
    scan.start()
    assert scanner_inserted.wait(_DEADLINE_SECONDS)
    submit = threading.Thread(target=run, args=("submit", fast_path), name="fast-path")
    submit.start()
    _poll(lambda: "fast_path_pid" in results, "the fast path's connection")
    # The fast path waits on the scanner's uncommitted row (before the fix: holding the booking).
    _poll(lambda: _waiting_on_a_lock(results["fast_path_pid"]), "the fast path to wait on the scanner")
    resume_scanner.set()
    scan.join(_DEADLINE_SECONDS * 2)
    submit.join(_DEADLINE_SECONDS * 2)

    report = results["scan"]
    assert not isinstance(report, Exception), report
    assert not report.errors, report.errors
    response = results["submit"]
    assert not isinstance(response, Exception), response
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["booking_status"]) == ("mined", "PAID")
    event = ChainEvent.objects.get()  # stored once, by the scanner that got there first
    assert (event.tx_hash, event.status, event.source) == (tx_hash, "PROCESSED", "scanner")
    assert Booking.objects.get(pk=booking.pk).status == "PAID"
    changes = BookingStatusChange.objects.filter(booking=booking, to_status="PAID")
    assert list(changes.values_list("source", "tx_hash")) == [("chain", tx_hash)]


def test_a_database_conflict_is_a_503_with_retry_after_and_the_retry_applies(paid_booking):
    """Another transaction holds the booking's row lock past this request's lock_timeout: the
    answer is a retryable 503 with Retry-After and a JSON body, nothing is stored; sent again once
    the lock is gone, the payment applies."""
    booking, customer, tx_hash = paid_booking
    holding, release = threading.Event(), threading.Event()

    def holder():
        from django.db import transaction

        try:
            with transaction.atomic():
                Booking.objects.select_for_update().get(pk=booking.pk)
                holding.set()
                release.wait(_DEADLINE_SECONDS)
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(_DEADLINE_SECONDS)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        try:
            response = _submit(customer, booking, tx_hash)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    finally:
        release.set()
        thread.join(_DEADLINE_SECONDS)

    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "1"
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert (body["code"], body["retry_after_seconds"]) == ("database_conflict", 1)
    assert body["detail"]
    assert not ChainEvent.objects.exists()  # rolled back whole
    assert Booking.objects.get(pk=booking.pk).status == "PENDING_PAYMENT"

    again = _submit(customer, booking, tx_hash)
    assert again.status_code == 200, again.content
    assert again.json()["booking_status"] == "PAID"
