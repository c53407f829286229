"""`manage.py scan_chain --once` on a running system: beat's scans hold the scan lock nearly all the
time, so the command waits for it (up to --wait) instead of answering "skipped" for ever, and
says plainly, with a non-zero exit, when the wait ran out."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from chain_events.cursor import indexed_contract, scan_lock

pytestmark = [pytest.mark.chain, pytest.mark.django_db]


@contextmanager
def another_scan_holding_the_lock(release_after: float):
    """Another scan (beat's) holding the scan lock from now until `release_after` seconds have
    passed or the block ends, whichever comes first."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with scan_lock(indexed_contract()) as acquired:
            assert acquired
            held.set()
            release.wait(release_after)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join(10)


def test_scan_once_waits_for_the_lock_and_then_scans(flow, settings):
    settings.CHAIN_SCAN_FOLLOW_SECONDS = 0
    flow.paid_booking()
    out, started = StringIO(), time.monotonic()
    with another_scan_holding_the_lock(release_after=1.0):
        call_command("scan_chain", "--once", "--wait", "20", stdout=out)
    assert time.monotonic() - started >= 0.8  # it waited for the holder
    assert "1 new, 1 booking(s) applied" in out.getvalue(), out.getvalue()


def test_scan_once_gives_up_after_wait_with_a_clear_error(chain_settings):
    with another_scan_holding_the_lock(release_after=30), pytest.raises(
        CommandError, match=r"another scan held the scan lock for 0\.3 s .*longer --wait"
    ):
        call_command("scan_chain", "--once", "--wait", "0.3", stdout=StringIO())
