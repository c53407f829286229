"""manage.py emergency_pause --reason "...": pause the escrow contract now (operator key).

--unpause unpauses instead (owner-only on chain: needs CONTRACT_OWNER_PRIVATE_KEY).
Sends directly, not through the worker's queue (an incident pause waits on no broker and no busy
worker): run it where the operator key is set, e.g. on the worker's host.
"""
import getpass

from django.core.management.base import BaseCommand, CommandError

from chain_events.rpc import RpcError
from reconciliation.operations import ActionRefused, pause_contract, unpause_contract
from reconciliation.transactions import TransactionError


class Command(BaseCommand):
    help = "Pause (or --unpause) the escrow contract; records who and why."

    def add_arguments(self, parser):
        parser.add_argument("--reason", required=True)
        parser.add_argument("--unpause", action="store_true")
        parser.add_argument("--actor", default=None, help="who asks (default: command:<os user>)")

    def handle(self, *args, **options):
        actor = options["actor"] or f"command:{getpass.getuser()}"
        action = unpause_contract if options["unpause"] else pause_contract
        try:
            entry = action(actor=actor, reason=options["reason"])
        except (ActionRefused, TransactionError, RpcError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"contract {entry.action}d by {entry.actor} in tx {entry.transaction.tx_hash}")
