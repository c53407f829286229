"""manage.py check_ledger: the ledger check now (reconciliation.ledger); prints the report and
every difference. Exit 0 when the ledger agrees with the chain at the pinned block, 1 on any
difference or when the check could not finish (RPC unavailable)."""
from django.core.management.base import BaseCommand, CommandError

from reconciliation.ledger import check_ledger


class Command(BaseCommand):
    help = "Compare the escrow balance, fees, payouts, earnings, statuses and operator nonces with the chain."

    def handle(self, *args, **options):
        report = check_ledger(trigger="command")
        self.stdout.write(str(report))
        for mismatch in report.mismatches:
            subject = mismatch.get("account") or f"booking {mismatch['booking']} ({mismatch['chain_booking_id']})"
            self.stdout.write(f"  {mismatch['kind']}: {subject}: database {mismatch['database']}, "
                              f"chain {mismatch['chain']}; {mismatch['detail']}")
        if report.error:
            raise CommandError(f"ledger check {report.pk} did not finish: {report.error}")
        if not report.ok:
            raise CommandError(f"ledger check {report.pk}: {report.mismatch_count} mismatch(es) at block "
                               f"{report.chain_block}")
