"""Scan the chain for escrow events and apply them.

    python manage.py scan_chain --once          one pass up to the confirmed head
    python manage.py scan_chain                 keep following the head (Ctrl-C stops)
    python manage.py scan_chain --rewind-to N   move the cursor back to block N (clears a halt)

On a running system beat's scans hold the scan lock nearly all the time (each follows the head
for a moment): a pass waits for it up to --wait seconds (default 60) and takes it between two of
beat's scans; `--once` that still finds it held exits non-zero and says so.
"""
from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chain_events import scanner
from chain_events.cursor import rewind_cursor
from chain_events.rpc import RpcError


class Command(BaseCommand):
    help = "Scan block ranges for escrow events and apply them to bookings."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass up to the confirmed head, then exit")
        parser.add_argument("--rewind-to", type=int, metavar="N", help="move the sync cursor back to block N first")
        parser.add_argument("--reason", default="", help="why the cursor is rewound (logged)")
        parser.add_argument(
            "--wait", type=float, default=60.0, metavar="SECONDS",
            help="how long a pass waits for the scan lock while another scan (beat's) holds it (default 60)",
        )

    def handle(self, *args, once=False, rewind_to=None, reason="", wait=60.0, **options):
        if wait < 0:
            raise CommandError("--wait must be at least 0 seconds")
        if rewind_to is not None:
            try:
                cursor = rewind_cursor(rewind_to, reason=reason or "manage.py scan_chain --rewind-to")
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"cursor rewound to block {cursor.last_block}")
        while True:
            try:
                report = scanner.scan_chain(lock_wait_seconds=wait)
            except RpcError as exc:
                if once:
                    raise CommandError(f"RPC unavailable: {exc}") from exc
                self.stderr.write(f"RPC unavailable: {exc}")
                report = None
            if report is not None:
                if report.skipped and once:
                    raise CommandError(
                        f"another scan held the scan lock for {wait:g} s (beat's scans, on a running system): "
                        "nothing was scanned; run again with a longer --wait"
                    )
                if report.skipped:
                    self.stdout.write(f"another scan held the lock for {wait:g} s; skipped")
                else:
                    self.stdout.write(
                        f"cursor {report.cursor} head {report.head}: {report.ranges} range(s), {report.logs} log(s), "
                        f"{report.inserted} new, {report.bookings} booking(s) applied, {report.orphans} orphan(s), "
                        f"{report.failed_events} failed, reorgs {report.reorgs or '-'}"
                    )
                if report.halted:
                    raise CommandError("scanner halted (reorg deeper than the window): see the sync cursor")
            if once:
                return
            time.sleep(settings.SCAN_INTERVAL_SECONDS)
