"""The one single-flight lock of periodic jobs (common.singleflight): a PostgreSQL advisory lock."""
from __future__ import annotations

import threading

import psycopg
import pytest

from common.singleflight import _lock_connection, lock_key, single_flight

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_second_caller_is_refused_while_the_first_holds_the_lock_and_gets_it_after():
    with single_flight("job-a") as first:
        assert first
        with single_flight("job-a") as second:
            assert not second
        with single_flight("job-b") as other:
            assert other  # another job's name is another lock
    with single_flight("job-a") as again:
        assert again


def test_a_job_outliving_its_lease_cannot_release_another_holders_lock():
    """The failure of a cache key with a lease: A's key expires, B takes it, A finishes and
    deletes B's key. Here only the session holding the lock can release it."""
    with single_flight("slow-job") as holder:
        assert holder
        stale = _lock_connection()  # what an earlier, expired run would hold
        try:
            released = stale.execute("SELECT pg_advisory_unlock(%s)", [lock_key("slow-job")]).fetchone()[0]
            assert released is False
        finally:
            stale.close()
        with single_flight("slow-job") as intruder:
            assert not intruder  # still held by the live holder


def test_a_killed_holder_frees_the_lock_at_once():
    holder = _lock_connection()
    assert holder.execute("SELECT pg_try_advisory_lock(%s)", [lock_key("killed-job")]).fetchone()[0]
    with single_flight("killed-job") as while_alive:
        assert not while_alive
    # A SIGKILLed worker's session ends with its socket: terminate it from the server side.
    killer = _lock_connection()
    try:
        killer.execute("SELECT pg_terminate_backend(%s)", [holder.info.backend_pid])
    finally:
        killer.close()
    with pytest.raises(psycopg.Error):
        holder.execute("SELECT 1")
    with single_flight("killed-job") as after_kill:
        assert after_kill


def test_waiting_for_the_lock_takes_it_when_the_holder_finishes():
    taken = threading.Event()
    release = threading.Event()

    def hold():
        with single_flight("handover") as got:
            assert got
            taken.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5)
    threading.Timer(0.3, release.set).start()
    with single_flight("handover", wait_seconds=5, poll_seconds=0.05) as waited:
        assert waited
    thread.join(5)
