import sys

from django.apps import AppConfig

from chain_events.consumers import register_consumer

# Python's default. py_ecc (imported by eth_account) raises the limit to 100,000 for the whole
# process; C code that recurses per level of input (json's scanner, on a request body) then
# overflows a thread's C stack and kills the process before RecursionError can be raised.
RECURSION_LIMIT = 1000


class EscrowConfig(AppConfig):
    name = "escrow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import py_ecc  # noqa: F401  (its import-time side effect happens here, then is undone)

        from .chain_consumer import BookingConsumer  # needs the models: importable once apps are ready

        sys.setrecursionlimit(RECURSION_LIMIT)
        register_consumer(BookingConsumer())  # the chain indexer's events are applied to bookings
