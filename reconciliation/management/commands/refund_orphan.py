"""manage.py refund_orphan <id> --reason "...": refund an orphan payment (emergencyCancelBooking).

Sends directly, not through the worker's queue: run it where the operator key is set (the worker's host).
"""
import getpass

from django.core.management.base import BaseCommand, CommandError

from chain_events.models import Orphan
from chain_events.rpc import RpcError
from reconciliation.operations import ActionRefused, refund_orphan
from reconciliation.transactions import TransactionError


class Command(BaseCommand):
    help = "Refund an orphan (paid on chain, unknown to the database) in full to its customer."

    def add_arguments(self, parser):
        parser.add_argument("orphan_id", type=int)
        parser.add_argument("--reason", required=True)
        parser.add_argument("--actor", default=None, help="who asks (default: command:<os user>)")

    def handle(self, *args, **options):
        try:
            orphan = Orphan.objects.get(pk=options["orphan_id"])
        except Orphan.DoesNotExist:
            raise CommandError(f"no orphan with id {options['orphan_id']}") from None
        actor = options["actor"] or f"command:{getpass.getuser()}"
        try:
            record = refund_orphan(orphan, actor=actor, reason=options["reason"])
        except (ActionRefused, TransactionError, RpcError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"orphan {orphan.pk} refunded in tx {record.tx_hash} (block {record.block_number}); "
            "it shows RESOLVED once the scanner processes the BookingCancelled log"
        )
