"""Console pages of the operations floor: run reports, flags (resolve with a note), the
transactions the backend sent, operator nonces, emergency pauses (with the "pause the contract"
page), disputes (with the "resolve with a split" page), and the operators' actions on the pages
of the floors below: bookings (reconcile now, acknowledge attention, rebuild from the chain,
emergency cancel, complete for the provider) and orphans (refund, ignore).

Read-only for staff; operators act through reconciliation.operations and reconciliation.reconcile.
The actions that send a transaction (emergency cancel, orphan refund, pause) only queue it for the
worker, the one process that holds the operator key (reconciliation.console_requests).
The booking and orphan pages are those of escrow and chain_events, registered again here as
subclasses that add the actions and the transactions sent: the lower floors' admins know
nothing of operations.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from chain_events.admin import OrphanAdmin
from chain_events.models import Orphan, OrphanStatus
from chain_events.rpc import RpcError
from common.console import ConsoleInline, ConsoleModelAdmin, ReasonForm, actor_of, reason_action, reason_page
from common.eth import USDC_DECIMALS, usdc
from escrow.admin import BookingAdmin
from escrow.models import Booking
from escrow.money import CancellationSplit, split_completion

from . import (
    console_requests,
    disputes,
    ledger_admin,  # noqa: F401 (registers the ledger reports' pages)
    operations,
    tasks,
)
from .models import (
    Dispute,
    EmergencyPause,
    OperatorNonce,
    ReconciliationFlag,
    ReconciliationReport,
    SentTransaction,
)
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
        """Confirmation page asking why; on confirm, pause() from the operator account is queued
        for the worker (reconciliation.console_requests): the pause record and its history show
        the outcome."""
        if not self.has_operate_permission(request):
            raise PermissionDenied("only operators may pause the contract")
        form = ReasonForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                tasks.send_pause.delay(actor_of(request), form.cleaned_data["reason"])
            except Exception as exc:  # the broker (Redis) is unreachable: nothing was queued
                self.message_user(request, f"The pause was not queued: {exc}", messages.ERROR)
            else:
                self.message_user(request, "Pause queued: the worker sends pause(); the new pause record "
                                           "below shows the outcome.", messages.SUCCESS)
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


class BookingDisputeInline(ConsoleInline):
    model = Dispute
    verbose_name_plural = "dispute"
    fields = ("opened_at", "status", "reason", "decided_by", "decided_at", "decision_reason")
    readonly_fields = fields


admin.site.unregister(Booking)


@admin.register(Booking)
class BookingOperationsAdmin(BookingAdmin):
    inlines = [*BookingAdmin.inlines, BookingTransactionInline, BookingFlagInline, BookingDisputeInline]
    actions = ["reconcile_now", "acknowledge_attention", "rebuild_from_chain", "emergency_cancel",
               "complete_for_provider"]

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
                "The worker sends it: its transaction appears on the booking's page, the outcome in its "
                "history. The booking becomes CANCELLED when the refund's log is processed. This cannot be undone.",
        done="Refund queued",
    )
    def emergency_cancel(booking, actor, reason):
        operations.check_emergency_cancel(booking)
        tasks.send_emergency_cancel.delay(booking.pk, actor, reason)
        return f"emergencyCancelBooking {console_requests.QUEUED}"

    @reason_action(
        description="Complete for the provider (completeServiceByOperator)…",
        title="Complete for the provider",
        warning="completeServiceByOperator pays the booking out as a completion (provider, platform fee, "
                "inviter fee) from the operator account: for a booking whose customer neither confirms nor "
                "cancels, e.g. one kept waiting with cancellation requests left to lapse. Refused while a "
                "cancellation authorization can still be executed, for a disputed booking (resolve the "
                "dispute instead) and, by the contract, within its delay after the payment. The worker sends "
                "it: its transaction appears on the booking's page, the outcome in its history. The booking "
                "becomes COMPLETED when the completion's log is processed. This cannot be undone.",
        done="Completion queued",
    )
    def complete_for_provider(booking, actor, reason):
        operations.check_operator_completion(booking)
        tasks.send_operator_completion.delay(booking.pk, actor, reason)
        return f"completeServiceByOperator {console_requests.QUEUED}"


# -- disputes: what the customer contests, and the split an operator decides ----------------------
class UnsettledDisputeFilter(admin.SimpleListFilter):
    title = "open"
    parameter_name = "open"

    def lookups(self, request, model_admin):
        return [("1", "open (the money is still escrowed)"), ("0", "settled")]

    def queryset(self, request, queryset):
        unsettled = disputes.unsettled_disputes().values("pk")
        if self.value() == "1":
            return queryset.filter(pk__in=unsettled)
        if self.value() == "0":
            return queryset.exclude(pk__in=unsettled)
        return queryset


SPLIT_PARTS = ("customer", "provider", "platform", "inviter")


class DisputeSplitForm(ReasonForm):
    """The four parts of the amount, in USDC to the base unit (6 decimals), and why."""

    customer = forms.DecimalField(min_value=0, decimal_places=USDC_DECIMALS, label="To the customer (USDC)")
    provider = forms.DecimalField(min_value=0, decimal_places=USDC_DECIMALS, label="To the provider (USDC)")
    platform = forms.DecimalField(min_value=0, decimal_places=USDC_DECIMALS, label="To the platform (USDC)")
    inviter = forms.DecimalField(min_value=0, decimal_places=USDC_DECIMALS, label="To the inviter (USDC)",
                                 initial=0)
    field_order = [*SPLIT_PARTS, "reason"]

    def __init__(self, booking: Booking, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.booking = booking
        if not booking.inviter_address:
            self.fields["inviter"].disabled = True
            self.fields["inviter"].help_text = "The booking has no inviter."

    def clean(self):
        data = super().clean()
        if any(name not in data for name in SPLIT_PARTS):
            return data
        split = CancellationSplit(*(int(data[name].scaleb(USDC_DECIMALS)) for name in SPLIT_PARTS))
        try:
            disputes.check_split(split, amount=int(self.booking.amount), has_inviter=bool(self.booking.inviter_address))
        except operations.ActionRefused as exc:
            raise forms.ValidationError(f"{exc}.") from None
        data["split"] = split
        return data


@admin.register(Dispute)
class DisputeAdmin(ConsoleModelAdmin):
    """The customer's case (reason, evidence, links: shown as text, never followed) and the
    operators' "resolve with a split" page."""

    list_display = ("opened_at", "booking", "status", "outcome", "amount", "decided_by", "decided_at")
    list_filter = (UnsettledDisputeFilter, "status")
    search_fields = ("booking__uuid", "=booking__chain_booking_id", "opened_by")
    list_select_related = ("booking",)
    readonly_fields = ("booking", "amount", "opened_by", "opened_at", "reason", "evidence", "evidence_links",
                       "status", "outcome", "decision", "decided_by", "decided_at", "decision_reason", "resolve")
    fields = readonly_fields

    def get_urls(self):
        resolve = self.admin_site.admin_view(self.resolve_view)
        return [path("<path:object_id>/resolve/", resolve, name="reconciliation_dispute_resolve"), *super().get_urls()]

    @admin.display(description="amount")
    def amount(self, dispute):
        return usdc(dispute.booking.amount)

    @admin.display(description="outcome")
    def outcome(self, dispute):
        return disputes.dispute_outcome(dispute)

    @admin.display(description="links")
    def evidence_links(self, dispute):
        return "\n".join(dispute.links) or "—"

    @admin.display(description="decided split")
    def decision(self, dispute):
        split = disputes.decided_split(dispute)
        if split is None:
            return "—"
        return ", ".join(f"{part} {usdc(getattr(split, part))}" for part in SPLIT_PARTS)

    @admin.display(description="resolve")
    def resolve(self, dispute):
        if not disputes.unsettled_disputes().filter(pk=dispute.pk).exists():
            return "settled"
        url = reverse("admin:reconciliation_dispute_resolve", args=[dispute.pk])
        return format_html('<a href="{}" id="resolve-dispute">Resolve with a split…</a>', url)

    def resolve_view(self, request, object_id):
        """The split form: the dispute, its evidence and four amounts that must sum to the booking's
        amount. On confirm the resolution is queued for the worker (reconciliation.console_requests)."""
        if not self.has_operate_permission(request):
            raise PermissionDenied("only operators may resolve disputes")
        dispute = get_object_or_404(Dispute.objects.select_related("booking"), pk=object_id)
        booking = dispute.booking
        form = DisputeSplitForm(booking, request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            split, reason, actor = form.cleaned_data["split"], form.cleaned_data["reason"], actor_of(request)
            parts = [str(getattr(split, part)) for part in SPLIT_PARTS]
            try:
                disputes.check_resolution(dispute, split)
                tasks.send_dispute_resolution.delay(dispute.pk, actor, reason, parts)
            except (operations.ActionRefused, RpcError) as exc:
                form.add_error(None, f"Not queued: {exc}.")
            except Exception as exc:  # the broker (Redis) is unreachable: nothing was queued
                form.add_error(None, f"Not queued: {exc}")
            else:
                decided = ", ".join(f"{part} {usdc(getattr(split, part))}" for part in SPLIT_PARTS)
                self.log_change(request, dispute, f"Resolve dispute: {reason} → {decided}: resolveDispute "
                                                  f"{console_requests.QUEUED}")
                self.message_user(request, f"Resolution of {dispute} queued ({decided}): the worker sends it.",
                                  messages.SUCCESS)
                return redirect("admin:reconciliation_dispute_change", dispute.pk)
        amount = int(booking.amount)
        inviter_rate = booking.inviter_fee_rate if booking.inviter_address else 0
        completion = split_completion(amount, booking.platform_fee_rate, inviter_rate)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Resolve {dispute}",
            "opts": self.model._meta,
            "dispute": dispute,
            "booking": booking,
            "amount": usdc(amount),
            "amount_base_units": amount,
            "completion": [(part, usdc(getattr(completion, part))) for part in ("provider", "platform", "inviter")],
            "form": form,
        }
        return TemplateResponse(request, "admin/reconciliation/dispute/resolve.html", context)


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
                "account. An ignored orphan is reopened first. The worker sends it: its transaction appears "
                "on the orphan's page, the outcome in its history. The orphan shows resolved once the "
                "refund's log is processed.",
        done="Refund queued",
        eligible={"status__in": [OrphanStatus.OPEN, OrphanStatus.IGNORED]},
    )
    def refund(orphan, actor, reason):
        operations.check_orphan_refund(orphan)
        tasks.send_orphan_refund.delay(orphan.pk, actor, reason)
        return f"emergencyCancelBooking {console_requests.QUEUED}"

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
