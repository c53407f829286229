"""Re-fetch and re-apply the escrow events of a block range (idempotent).

    python manage.py replay_events --from-block N [--to-block M]
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from chain_events import services
from chain_events.rpc import RpcError


class Command(BaseCommand):
    help = "Re-fetch the escrow logs of a block range and re-apply them (safe to repeat)."

    def add_arguments(self, parser):
        parser.add_argument("--from-block", type=int, required=True)
        parser.add_argument("--to-block", type=int, default=None, help="default: the confirmed head")

    def handle(self, *args, from_block, to_block, **options):
        if from_block < 0 or (to_block is not None and to_block < from_block):
            raise CommandError("need 0 <= --from-block <= --to-block")
        try:
            report = services.replay_range(from_block, to_block, actor="manage.py replay_events")
        except RpcError as exc:
            raise CommandError(f"RPC unavailable: {exc}") from exc
        self.stdout.write(
            f"replayed blocks {report.from_block}-{report.to_block}: {report.logs} log(s), {report.inserted} new, "
            f"{report.removed} removed, {report.bookings} booking(s) applied, {report.orphans} orphan(s), "
            f"{report.failed_events} failed"
        )
