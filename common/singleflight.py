"""Single-flight for periodic jobs and one-at-a-time actions: a session-level PostgreSQL
advisory lock held on a connection of its own.

Why not a cache key with a lease (SET NX + DELETE): a holder that outlives the lease deletes
the next holder's key, and a killed worker's key blocks every run until it expires. An
advisory lock belongs to the session that took it: only that session can release it, and
PostgreSQL frees it the moment that session ends (a SIGKILLed worker included). The lock
lives on its own connection, so the job's own transactions, and Django closing or replacing
the thread's connection, never touch it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import psycopg
from django.db import connections
from eth_utils import keccak


def lock_key(name: str) -> int:
    """The advisory lock key (a signed 64-bit int) of a job name."""
    return int.from_bytes(keccak(name.encode())[:8], "big", signed=True)


def _lock_connection() -> psycopg.Connection:
    params = connections["default"].settings_dict
    return psycopg.connect(
        dbname=params["NAME"], user=params.get("USER") or None, password=params.get("PASSWORD") or None,
        host=params.get("HOST") or None, port=params.get("PORT") or None, autocommit=True,
        application_name="bookme-single-flight", connect_timeout=10,
    )


@contextmanager
def single_flight(name: str, *, wait_seconds: float = 0.0, poll_seconds: float = 0.1):
    """Yield True while this process holds the lock `name`, False when another holder kept it
    for `wait_seconds` (the caller then skips its run)."""
    key = lock_key(name)
    conn = _lock_connection()
    acquired = False
    try:
        give_up_at = time.monotonic() + wait_seconds
        while True:
            acquired = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
            if acquired or time.monotonic() + poll_seconds > give_up_at:
                break
            time.sleep(poll_seconds)
        yield acquired
    finally:
        try:
            if acquired and not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", [key])
        finally:
            conn.close()  # ends the session: PostgreSQL frees whatever it still held
