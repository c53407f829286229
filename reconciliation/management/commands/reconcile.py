"""manage.py reconcile --once: one reconciliation run now; prints its report (exit 1 if it failed)."""
from django.core.management.base import BaseCommand, CommandError

from reconciliation.models import ReportStatus
from reconciliation.reconcile import reconcile_bookings


class Command(BaseCommand):
    help = "Compare bookings with the chain now, repair what the chain is ahead on, flag the rest."

    def add_arguments(self, parser):
        parser.add_argument(
            "--once", action="store_true", help="run once and exit (the only mode; beat runs it periodically)"
        )
        parser.add_argument("--actor", default="command:reconcile", help="who runs it (audit trail)")

    def handle(self, *args, **options):
        report = reconcile_bookings(trigger="command", actor=options["actor"])
        self.stdout.write(
            f"report {report.pk}: {report.status} at block {report.chain_block}: {report.checked} checked, "
            f"{report.in_agreement} in agreement, {report.repaired} repaired, {report.flagged} flagged, "
            f"{report.expired} expired, {report.cancellations_lapsed} cancellations lapsed, {report.errors} errors, "
            f"{report.rpc_round_trips} RPC round trips, {report.duration_seconds:.2f} s"
        )
        for detail in report.error_details:
            self.stderr.write(f"  error: {detail}")
        if report.status != ReportStatus.OK:
            raise CommandError("reconciliation did not finish (see the errors above)")
