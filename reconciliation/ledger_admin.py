"""The console's pages of the ledger checks (reconciliation.ledger): read-only, one line per
difference with both figures. Registered by reconciliation/admin.py importing this module."""
from django.contrib import admin
from django.utils.html import format_html, format_html_join

from common.console import ConsoleModelAdmin

from .models import LedgerReport


@admin.register(LedgerReport)
class LedgerReportAdmin(ConsoleModelAdmin):
    list_display = ("started_at", "trigger", "chain_block", "ok", "mismatch_count", "error", "rpc_round_trips")
    list_filter = ("ok", "trigger")
    date_hierarchy = "started_at"
    readonly_fields = ("trigger", "chain_block", "ok", "mismatch_count", "differences", "figures", "error",
                       "rpc_round_trips", "started_at", "finished_at")
    fields = readonly_fields

    @admin.display(description="mismatches")
    def differences(self, report):
        if not report.mismatches:
            return "none"
        rows = [
            (m["kind"], m.get("account") or f"booking {m.get('booking')} ({m.get('chain_booking_id')})",
             m["database"], m["chain"], m.get("detail", ""))
            for m in report.mismatches
        ]
        return format_html(
            "<table><tr><th>kind</th><th>booking / account</th><th>database</th><th>chain</th><th></th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )
