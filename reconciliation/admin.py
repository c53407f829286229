"""Console pages of reconciliation: run reports, flags (resolve with a note), the transactions the
backend sent, operator nonces, and emergency pauses (with the "pause the contract" page).

Read-only for staff; operators act through reconciliation.services (see bookme/console.py).
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from common.console import ConsoleModelAdmin, ReasonForm, actor_of, confirm_with_reason

from .models import EmergencyPause, OperatorNonce, ReconciliationFlag, ReconciliationReport, SentTransaction


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

    @admin.action(description="Mark resolved with a note…", permissions=["operate"])
    def resolve(self, request, queryset):
        from .services import resolve_flag

        def perform(flag, actor, reason):
            resolve_flag(flag, actor=actor, note=reason)
            return ""

        return confirm_with_reason(
            self, request, queryset.filter(resolved_at__isnull=True),
            title="Resolve flag",
            warning="Resolving records that staff looked at the difference; it changes nothing on chain.",
            perform=perform,
            done="Resolved",
        )


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
        from .services import pause_contract

        if not self.has_operate_permission(request):
            raise PermissionDenied("only operators may pause the contract")
        form = ReasonForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            reason = form.cleaned_data["reason"]
            try:
                entry = pause_contract(actor=actor_of(request), reason=reason)
            except Exception as exc:  # ActionRefused, TransactionError, RpcError: show why, keep the record
                entry = EmergencyPause.objects.filter(actor=actor_of(request)[:200]).first()
                if entry is not None:
                    self.log_change(request, entry, f"Pause contract failed: {exc} (reason given: {reason})")
                self.message_user(request, f"The contract was not paused: {exc}", messages.ERROR)
            else:
                self.log_change(request, entry, f"Pause contract: {reason} → tx {entry.transaction.tx_hash}")
                self.message_user(request, f"Contract paused (tx {entry.transaction.tx_hash}).", messages.SUCCESS)
            return redirect("admin:reconciliation_emergencypause_changelist")
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": "Pause the contract",
            "warning": "pause() stops new payments and completions on chain for everyone until the contract "
                       "owner unpauses it. Refunds (emergency cancels), cancellations and the scanner keep working.",
            "objects": [],
            "form": form,
            "opts": opts,
            "app_label": opts.app_label,
            "action_name": "",
            "selected_ids": [],
            "submit_label": "Pause the contract",
        }
        return TemplateResponse(request, "admin/console/confirm_action.html", context)

