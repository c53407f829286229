"""Console pages of the operations floor: run reports, flags (resolve with a note), the
transactions the backend sent, operator nonces, emergency pauses (with the "pause the contract"
page), and the operators' actions on the pages of the floors below: bookings (reconcile now,
acknowledge attention, rebuild from the chain, emergency cancel) and orphans (refund, ignore).

Read-only for staff; operators act through reconciliation.operations and reconciliation.reconcile.
The booking and orphan pages are those of escrow and chain_events, registered again here as
subclasses that add the actions and the transactions sent: the lower floors' admins know
nothing of operations.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import path

from chain_events.admin import OrphanAdmin
from chain_events.models import Orphan, OrphanStatus
from common.console import ConsoleInline, ConsoleModelAdmin, ReasonForm, actor_of, reason_action, reason_page
from escrow.admin import BookingAdmin
from escrow.models import Booking

from . import operations
from .models import EmergencyPause, OperatorNonce, ReconciliationFlag, ReconciliationReport, SentTransaction
from .reconcile import reconcile_bookings


@admin.register(ReconciliationReport)
class ReconciliationReportAdmin(ConsoleModelAdmin):
    list_display = ("started_at", "trigger", "actor", "status", "checked", "in_agreement", "repaired", "flagged",
                    "expired", "cancellations_lapsed", "errors", "duration_seconds", "rpc_round_trips")
    list_filter = ("status", "trigger")
    date_hierarchy = "started_at"
    readonly_fields = ("trigger", "actor", "status", "chain_block", "checked", "in_agreement", "repaired", "flagged",
                       "expired", "cancellations_lapsed", "errors", "error_details", "rpc_round_trips", "started_at",
                       "finished_at", "duration_seconds")
    fields = readonly_fields


class OpenFlagFilter(admin.SimpleListFilter):
    title = "open"
    parameter_name = "open"

    def lookups(self, request, model_admin):
        return [("1", "open"), ("0", "resolved")]

    def queryset(self, request, queryset):
        if self.value() in ("0", "1"):
            return queryset.filter(resolved_at__isnull=self.value() == "1")
        return queryset


@admin.register(ReconciliationFlag)
class ReconciliationFlagAdmin(ConsoleModelAdmin):
    list_display = ("created_at", "booking", "kind", "database_status", "chain_status", "chain_block", "resolved_at",
                    "resolved_by")
    list_filter = (OpenFlagFilter, "kind")
    search_fields = ("booking__uuid", "=booking__chain_booking_id")
    list_select_related = ("booking",)
    actions = ["resolve"]
    readonly_fields = ("booking", "report", "kind", "database_status", "chain_status", "chain_block", "detail",
                       "created_at", "resolved_at", "resolved_by", "resolution_note")
    fields = readonly_fields

    @reason_action(
        description="Mark resolved with a note…",
        title="Resolve flag",
        warning="Resolving records that staff looked at the difference; it changes nothing on chain.",
        done="Resolved",
        eligible={"resolved_at__isnull": True},
    )
    def resolve(flag, actor, reason):
        operations.resolve_flag(flag, actor=actor, note=reason)
        return ""


@admin.register(SentTransaction)
class SentTransactionAdmin(ConsoleModelAdmin):
    list_display = ("created_at", "purpose", "status", "tx_hash", "nonce", "replacements", "booking", "orphan",
                    "actor", "mined_at")
    list_filter = ("status", "purpose")
    search_fields = ("=tx_hash", "booking__uuid", "=orphan__chain_booking_id", "actor")
    list_select_related = ("booking", "orphan")
    readonly_fields = ("purpose", "status", "booking", "orphan", "actor", "reason", "chain_id", "from_address",
                       "to_address", "nonce", "tx_hash", "tx_hashes", "replacements", "gas_limit", "max_fee_per_gas",
                       "max_priority_fee_per_gas", "block_number", "gas_used", "effective_gas_price", "error", "data",
                       "created_at", "submitted_at", "mined_at", "updated_at")
    fields = readonly_fields


@admin.register(OperatorNonce)
class OperatorNonceAdmin(ConsoleModelAdmin):
    list_display = ("address", "chain_id", "next_nonce", "updated_at")
    readonly_fields = ("address", "chain_id", "next_nonce", "updated_at")
    fields = readonly_fields


@admin.register(EmergencyPause)
class EmergencyPauseAdmin(ConsoleModelAdmin):
    """The record of every pause/unpause, and the operators' "pause the contract" page."""

    list_display = ("created_at", "action", "actor", "reason", "succeeded", "transaction")
    list_filter = ("action", "succeeded")
    readonly_fields = ("action", "actor", "reason", "succeeded", "transaction", "created_at")
    fields = readonly_fields

    def get_urls(self):
        pause = self.admin_site.admin_view(self.pause_view)
        return [path("pause/", pause, name="reconciliation_emergencypause_pause"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_pause": self.has_operate_permission(request)}
        return super().changelist_view(request, extra_context)

    def pause_view(self, request):
        """Confirmation page asking why; on confirm, pause_contract() sends pause() from the operator account."""
        if not self.has_operate_permission(request):
            raise PermissionDenied("only operators may pause the contract")
        form = ReasonForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            reason = form.cleaned_data["reason"]
            try:
                entry = operations.pause_contract(actor=actor_of(request), reason=reason)
            except Exception as exc:  # ActionRefused, TransactionError, RpcError: show why, keep the record
                entry = EmergencyPause.objects.filter(actor=actor_of(request)[:200]).first()
                if entry is not None:
                    self.log_change(request, entry, f"Pause contract failed: {exc} (reason given: {reason})")
                self.message_user(request, f"The contract was not paused: {exc}", messages.ERROR)
            else:
                self.log_change(request, entry, f"Pause contract: {reason} → tx {entry.transaction.tx_hash}")
                self.message_user(request, f"Contract paused (tx {entry.transaction.tx_hash}).", messages.SUCCESS)
            return redirect("admin:reconciliation_emergencypause_changelist")
        return reason_page(
            self, request, form, title="Pause the contract",
            warning="pause() stops new payments and completions on chain for everyone until the contract owner "
                    "unpauses it. Refunds (emergency cancels), cancellations and the scanner keep working.",
        )



# -- bookings: the escrow page, with what operations sent for them and the operators' actions ------
class BookingTransactionInline(ConsoleInline):
    model = SentTransaction
    fk_name = "booking"
    verbose_name_plural = "transactions sent by the backend"
    fields = ("created_at", "purpose", "status", "tx_hash", "nonce", "actor", "reason", "error")
    readonly_fields = fields


class BookingFlagInline(ConsoleInline):
    model = ReconciliationFlag
    verbose_name_plural = "reconciliation flags"
    fields = ("created_at", "kind", "database_status", "chain_status", "detail", "resolved_at", "resolved_by",
              "resolution_note")
    readonly_fields = fields


admin.site.unregister(Booking)


@admin.register(Booking)
class BookingOperationsAdmin(BookingAdmin):
    inlines = [*BookingAdmin.inlines, BookingTransactionInline, BookingFlagInline]
    actions = ["reconcile_now", "acknowledge_attention", "rebuild_from_chain", "emergency_cancel"]

    @admin.action(description="Reconcile now with the chain", permissions=["operate"])
    def reconcile_now(self, request, queryset):
        bookings = list(queryset)
        report = reconcile_bookings(trigger="admin", actor=actor_of(request), booking_ids=[b.pk for b in bookings])
        for booking in bookings:
            self.log_change(request, booking, f"Reconcile now: report #{report.pk}: {report}")
        level = messages.SUCCESS if report.status == "OK" and not report.errors else messages.WARNING
        self.message_user(request, f"Reconciliation report #{report.pk}: {report}", level)

    @reason_action(
        description="Acknowledge what needs attention (the chain's state stands)…",
        title="Acknowledge attention",
        warning="The reasons these bookings are flagged for (a chain payment that differs from the booking, "
                "an unexpected event sequence) are marked acknowledged and the bookings leave the attention "
                "list: a paid one is completed by the operator when its service window passes. The chain's "
                "state is already applied; nothing is sent. Open reconciliation flags are resolved on "
                "their own page.",
        done="Acknowledged",
    )
    def acknowledge_attention(booking, actor, reason):
        booking = operations.acknowledge_attention(booking, actor=actor, reason=reason)
        return "still needs attention (open reconciliation flags)" if booking.needs_attention else ""

    @reason_action(
        description="Rebuild from the chain (the database is ahead of it)…",
        title="Rebuild from the chain",
        warning="The bookings' events are read again from the chain, events whose block left the chain are "
                "marked removed, and each booking is set to what its events show (a paid booking the chain "
                "never saw paid goes back to PENDING_PAYMENT). Use it when reconciliation flags the database "
                "ahead of the chain and you have checked why. Their open reconciliation flags are resolved "
                "with your reason. Nothing is sent to the chain.",
        done="Rebuilt",
    )
    def rebuild_from_chain(booking, actor, reason):
        before = booking.status
        booking = operations.rebuild_booking_from_chain(booking, actor=actor, reason=reason)
        return f"{before} → {booking.status}" if booking.status != before else f"still {booking.status}"

    @reason_action(
        description="Emergency cancel: refund the customer in full…",
        title="Emergency cancel",
        warning="emergencyCancelBooking refunds the full amount to the customer from the operator account. "
                "The booking becomes CANCELLED when the refund's log is processed. This cannot be undone.",
        done="Refund sent",
    )
    def emergency_cancel(booking, actor, reason):
        record = operations.emergency_cancel_booking(booking, actor=actor, reason=reason)
        return f"emergencyCancelBooking tx {record.tx_hash} ({record.status})"


# -- orphans: the chain sync's page, with the refunds sent and the operators' actions ---------------
class OrphanTransactionInline(ConsoleInline):
    model = SentTransaction
    fk_name = "orphan"
    verbose_name_plural = "refund transactions"
    fields = ("created_at", "purpose", "status", "tx_hash", "nonce", "actor", "reason", "error")
    readonly_fields = fields


admin.site.unregister(Orphan)


@admin.register(Orphan)
class OrphanOperationsAdmin(OrphanAdmin):
    inlines = [*OrphanAdmin.inlines, OrphanTransactionInline]
    actions = ["refund", "ignore"]

    @reason_action(
        description="Refund the customer (emergencyCancelBooking)…",
        title="Refund orphan",
        warning="emergencyCancelBooking refunds the full amount to the paying wallet from the operator "
                "account. An ignored orphan is reopened first. The orphan shows resolved once the "
                "refund's log is processed.",
        done="Refund sent",
        eligible={"status__in": [OrphanStatus.OPEN, OrphanStatus.IGNORED]},
    )
    def refund(orphan, actor, reason):
        record = operations.refund_orphan(orphan, actor=actor, reason=reason)
        return f"emergencyCancelBooking tx {record.tx_hash} ({record.status})"

    @reason_action(
        description="Ignore (no refund due) with a reason…",
        title="Ignore orphan",
        warning="The money stays in the escrow and the orphan leaves the attention list.",
        done="Ignored",
        eligible={"status": OrphanStatus.OPEN},
    )
    def ignore(orphan, actor, reason):
        operations.ignore_orphan(orphan, actor=actor, reason=reason)
        return ""
