from django.conf import settings
from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin with the operators' console as its default site (still at /admin/)."""

    default_site = "bookme.console.ConsoleAdminSite"

    def ready(self):
        super().ready()
        # The console's database-backed gauges (dead letters, flags, stuck bookings, ...) on /metrics.
        from .console_metrics import register_console_collector

        register_console_collector()
        # Counters defined beside the code that counts them: imported here so every process's
        # /metrics lists them from the start (ops/prometheus-alerts.yml relies on their names).
        import chain_events.rpc  # noqa: F401  bookme_rpc_errors_total
        import reconciliation.metrics  # noqa: F401  bookme_reconciliation_mismatches_total, _run_seconds
        import reconciliation.transactions  # noqa: F401  bookme_backend_transactions_total

        from .checks import check_identity_at_start

        # The web process and the worker refuse to run against another chain, or with keys the
        # contract does not know; commands, beat and tests start without asking the node.
        if settings.PROCESS_ROLE in ("web", "worker"):
            check_identity_at_start()
