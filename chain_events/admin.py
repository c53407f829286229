"""Console pages of the chain sync: events (dead letters first; retry, mark resolved), orphans
and the sync cursor (lag in blocks, time of the last scan).

Read-only for staff; operators act through actions that call chain_events.services. The
operations floor extends the orphan page (reconciliation/admin.py: refund, ignore, the refund
transactions sent).
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.db.models import Case, IntegerField, Value, When
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from common.console import ConsoleModelAdmin, actor_of, reason_action
from common.eth import usdc

from .models import ChainEvent, EventStatus, Orphan, SyncCursor
from .services import request_retry, resolve_event


def _booking_link(chain_booking_id: str):
    """The booking list searched for this chain booking id: the indexer knows booking ids, not
    bookings (the search shows the booking, or that there is none)."""
    url = reverse("admin:escrow_booking_changelist") + "?" + urlencode({"q": chain_booking_id})
    return format_html("<a href='{}'>{}</a>", url, chain_booking_id)


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

    @reason_action(
        description="Mark resolved (not applied) with a reason…",
        title="Mark resolved",
        warning="The events stay unapplied and are no longer retried: do this only after fixing their "
                "bookings another way. A later retry reopens them.",
        done="Resolved",
    )
    def mark_resolved(event, actor, reason):
        resolve_event(event, actor, reason)
        return ""


@admin.register(Orphan)
class OrphanAdmin(ConsoleModelAdmin):
    list_display = ("chain_booking_id", "status", "chain_status", "amount_usdc", "customer_address", "block_number",
                    "created_at", "resolved_by")
    list_filter = ("status", "chain_status")
    search_fields = ("=chain_booking_id", "=tx_hash", "=customer_address", "=provider_address")
    readonly_fields = ("chain_booking_id", "status", "chain_status", "amount_usdc", "customer_address",
                       "provider_address", "event_name", "event", "block_number", "tx_hash", "chain_id",
                       "contract_address", "resolved_by", "resolved_at", "note", "created_at", "updated_at")
    fields = readonly_fields

    @admin.display(description="amount", ordering="amount")
    def amount_usdc(self, orphan):
        return usdc(orphan.amount)


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

