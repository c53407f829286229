"""Console pages of the chain sync: events (dead letters first; retry, mark resolved), orphans
(refund, ignore) and the sync cursor (lag in blocks, time of the last scan).

Read-only for staff; operators act through actions that call chain_events.services and
reconciliation.services (see bookme/console.py).
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Case, IntegerField, Value, When
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from common.console import ConsoleInline, ConsoleModelAdmin, actor_of, confirm_with_reason
from common.eth import usdc

from .models import ChainEvent, EventStatus, Orphan, OrphanStatus, SyncCursor


def _booking_link(chain_booking_id: str):
    from escrow.models import Booking

    booking = Booking.objects.filter(chain_booking_id=chain_booking_id).only("pk", "uuid").first()
    if booking is None:
        return format_html("{} <em>(no booking)</em>", chain_booking_id)
    return format_html("<a href='{}'>{}</a>", reverse("admin:escrow_booking_change", args=[booking.pk]), booking.uuid)


class OpenDeadLetterFilter(admin.SimpleListFilter):
    """Dead letters still waiting for staff (not resolved by hand)."""

    title = "resolution"
    parameter_name = "unresolved"

    def lookups(self, request, model_admin):
        return [("1", "waiting for staff"), ("0", "resolved by staff")]

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(status__in=[EventStatus.DEAD_LETTER, EventStatus.FAILED], resolved_at__isnull=True)
        if self.value() == "0":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(ChainEvent)
class ChainEventAdmin(ConsoleModelAdmin):
    list_display = ("id", "event_name", "status", "short_booking_id", "block_number", "log_index", "retry_count",
                    "next_retry_at", "short_error", "resolved_by")
    list_filter = ("status", "event_name", OpenDeadLetterFilter, "source")
    search_fields = ("=tx_hash", "=chain_booking_id", "=block_hash")
    actions = ["retry_events", "mark_resolved"]
    readonly_fields = ("event_name", "status", "booking", "chain_booking_id", "args", "chain_id", "contract_address",
                       "block_number", "block_hash", "tx_hash", "tx_index", "log_index", "source", "retry_count",
                       "next_retry_at", "last_error", "processed_at", "resolved_by", "resolution_note", "resolved_at",
                       "created_at", "updated_at")
    fields = readonly_fields

    def get_queryset(self, request):
        # Dead letters waiting for staff first, then failing events, then the rest (newest first).
        # (Annotated before ordering: ModelAdmin.get_queryset orders by get_ordering() itself.)
        queryset = self.model._default_manager.get_queryset().annotate(
            attention_rank=Case(
                When(status=EventStatus.DEAD_LETTER, resolved_at__isnull=True, then=Value(0)),
                When(status__in=[EventStatus.FAILED, EventStatus.RETRY], then=Value(1)),
                When(status=EventStatus.PENDING, then=Value(2)),
                default=Value(3),
                output_field=IntegerField(),
            )
        )
        return queryset.order_by(*self.get_ordering(request))

    def get_ordering(self, request):
        return ("attention_rank", "-block_number", "-log_index")

    @admin.display(description="booking id")
    def short_booking_id(self, event):
        return event.chain_booking_id[:12] + "…"

    @admin.display(description="last error")
    def short_error(self, event):
        return event.last_error[:80]

    @admin.display(description="booking")
    def booking(self, event):
        return _booking_link(event.chain_booking_id)

    @admin.action(description="Retry the selected events now", permissions=["operate"])
    def retry_events(self, request, queryset):
        from .services import request_retry

        events = list(queryset.filter(status__in=[EventStatus.FAILED, EventStatus.DEAD_LETTER, EventStatus.RETRY]))
        queued = request_retry([e.pk for e in events], actor_of(request))
        for event in events:
            self.log_change(request, event, f"Retry requested (was {event.status}, {event.retry_count} attempts)")
        skipped = queryset.count() - len(events)
        self.message_user(
            request,
            f"{queued} event(s) queued for retry; they are applied by the next retry run."
            + (f" {skipped} event(s) skipped: not failed." if skipped else ""),
            messages.SUCCESS if queued else messages.WARNING,
        )

    @admin.action(description="Mark resolved (not applied) with a reason…", permissions=["operate"])
    def mark_resolved(self, request, queryset):
        from .services import resolve_event

        def perform(event, actor, reason):
            resolve_event(event, actor, reason)
            return ""

        return confirm_with_reason(
            self, request, queryset,
            title="Mark resolved",
            warning="The events stay unapplied and are no longer retried: do this only after fixing their "
                    "bookings another way. A later retry reopens them.",
            perform=perform,
            done="Resolved",
        )


def _orphan_transactions_inline():
    from reconciliation.models import SentTransaction

    class OrphanTransactionInline(ConsoleInline):
        model = SentTransaction
        fk_name = "orphan"
        verbose_name_plural = "refund transactions"
        fields = ("created_at", "purpose", "status", "tx_hash", "nonce", "actor", "reason", "error")
        readonly_fields = fields

    return OrphanTransactionInline


@admin.register(Orphan)
class OrphanAdmin(ConsoleModelAdmin):
    list_display = ("chain_booking_id", "status", "chain_status", "amount_usdc", "customer_address", "block_number",
                    "created_at", "resolved_by")
    list_filter = ("status", "chain_status")
    search_fields = ("=chain_booking_id", "=tx_hash", "=customer_address", "=provider_address")
    actions = ["refund", "ignore"]
    inlines = [_orphan_transactions_inline()]
    readonly_fields = ("chain_booking_id", "status", "chain_status", "amount_usdc", "customer_address",
                       "provider_address", "event_name", "event", "block_number", "tx_hash", "chain_id",
                       "contract_address", "resolved_by", "resolved_at", "note", "created_at", "updated_at")
    fields = readonly_fields

    @admin.display(description="amount", ordering="amount")
    def amount_usdc(self, orphan):
        return usdc(orphan.amount)

    @admin.action(description="Refund the customer (emergencyCancelBooking)…", permissions=["operate"])
    def refund(self, request, queryset):
        from reconciliation.services import refund_orphan

        def perform(orphan, actor, reason):
            record = refund_orphan(orphan, actor=actor, reason=reason)
            return f"emergencyCancelBooking tx {record.tx_hash} ({record.status})"

        return confirm_with_reason(
            self, request, queryset.filter(status__in=[OrphanStatus.OPEN, OrphanStatus.IGNORED]),
            title="Refund orphan",
            warning="emergencyCancelBooking refunds the full amount to the paying wallet from the operator "
                    "account. An ignored orphan is reopened first. The orphan shows resolved once the "
                    "refund's log is processed.",
            perform=perform,
            done="Refund sent",
        )

    @admin.action(description="Ignore (no refund due) with a reason…", permissions=["operate"])
    def ignore(self, request, queryset):
        from reconciliation.services import ignore_orphan

        def perform(orphan, actor, reason):
            ignore_orphan(orphan, actor=actor, reason=reason)
            return ""

        return confirm_with_reason(
            self, request, queryset.filter(status=OrphanStatus.OPEN),
            title="Ignore orphan",
            warning="The money stays in the escrow and the orphan leaves the attention list.",
            perform=perform,
            done="Ignored",
        )


@admin.register(SyncCursor)
class SyncCursorAdmin(ConsoleModelAdmin):
    list_display = ("chain_id", "contract_address", "last_block", "head_block", "lag_blocks", "last_scan_at",
                    "last_scan_age", "finalized_block", "range_size", "halted", "last_error_at")
    readonly_fields = ("chain_id", "contract_address", "last_block", "last_block_hash", "head_block", "lag_blocks",
                       "finalized_block", "range_size", "last_scan_at", "last_scan_age", "halted", "halt_reason",
                       "halted_at", "last_error", "last_error_at", "updated_at")
    fields = readonly_fields

    @admin.display(description="lag (blocks)")
    def lag_blocks(self, cursor):
        return cursor.lag_blocks

    @admin.display(description="since last scan")
    def last_scan_age(self, cursor):
        if cursor.last_scan_at is None:
            return "never"
        seconds = int((timezone.now() - cursor.last_scan_at).total_seconds())
        return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"

