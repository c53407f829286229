"""Console pages of the booking domain: bookings (with their history, chain events, signatures and
fees), signature nonces, platform fees, provider earnings. All read-only.

The operations floor extends the booking page (reconciliation/admin.py registers a subclass of
BookingAdmin with the transactions sent, reconciliation flags and the operators' actions).
"""
from __future__ import annotations

import csv
from datetime import timedelta

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from chain_events.models import ChainEvent
from common.console import ConsoleInline, ConsoleModelAdmin
from common.eth import usdc

from .earnings import fee_ledger_rows
from .models import (
    AttentionItem,
    Booking,
    BookingStatusChange,
    InviteCode,
    PlatformFee,
    ProviderEarnings,
    Referral,
    SignatureNonce,
)
from .selectors import stuck_bookings


class StuckFilter(admin.SimpleListFilter):
    """How long a booking has been stuck (see escrow.selectors.stuck_bookings for what "stuck" is)."""

    title = "stuck for"
    parameter_name = "stuck"
    AGES = {
        "15m": ("over 15 minutes", timedelta(minutes=15)),
        "1h": ("over 1 hour", timedelta(hours=1)),
        "6h": ("over 6 hours", timedelta(hours=6)),
        "24h": ("over 1 day", timedelta(days=1)),
        "7d": ("over 7 days", timedelta(days=7)),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self.AGES.items()]

    def queryset(self, request, queryset):
        if self.value() in self.AGES:
            stuck_ids = stuck_bookings(self.AGES[self.value()][1]).values("pk")
            return queryset.filter(pk__in=stuck_ids)
        return queryset


class StatusChangeInline(ConsoleInline):
    model = BookingStatusChange
    verbose_name_plural = "status history"
    fields = ("created_at", "from_status", "to_status", "source", "actor", "tx_hash", "note")
    readonly_fields = fields
    ordering = ("created_at", "id")
    show_change_link = False


class AttentionItemInline(ConsoleInline):
    model = AttentionItem
    verbose_name_plural = "attention (why staff are needed; open ones keep the booking out of auto-complete)"
    fields = ("raised_at", "kind", "reason", "acknowledged_at", "acknowledged_by", "acknowledged_why")
    readonly_fields = fields
    ordering = ("raised_at", "id")
    show_change_link = False


class SignatureInline(ConsoleInline):
    model = SignatureNonce
    verbose_name_plural = "signatures (EIP-712 authorizations issued)"
    fields = ("kind", "nonce", "created_at", "expires_at", "consumed_at", "consumed_tx_hash", "digest")
    readonly_fields = fields


class PlatformFeeInline(ConsoleInline):
    model = PlatformFee
    verbose_name_plural = "fees"
    fields = ("platform", "inviter", "provider", "tx_hash", "created_at")
    readonly_fields = fields

    @admin.display(description="platform")
    def platform(self, fee):
        return usdc(fee.platform_amount)

    @admin.display(description="inviter")
    def inviter(self, fee):
        return usdc(fee.inviter_amount)

    @admin.display(description="provider")
    def provider(self, fee):
        return usdc(fee.provider_amount)


@admin.register(Booking)
class BookingAdmin(ConsoleModelAdmin):
    list_display = ("uuid", "status", "amount_usdc", "customer_address", "provider_address", "scheduled_at",
                    "status_changed_at", "needs_attention")
    list_filter = ("status", StuckFilter, "needs_attention")
    search_fields = ("uuid", "chain_booking_id", "=customer_address", "=provider_address", "=inviter_address",
                     "=payment_tx_hash", "=completion_tx_hash", "=cancellation_tx_hash")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = [AttentionItemInline, StatusChangeInline, PlatformFeeInline, SignatureInline]
    fieldsets = (
        (None, {"fields": ("uuid", "chain_booking_id", "status", "status_changed_at", "needs_attention")}),
        ("Parties and money", {"fields": ("customer_address", "provider_address", "inviter_address", "amount_usdc",
                                          "platform_fee_rate", "inviter_fee_rate", "scheduled_at", "description")}),
        ("Chain", {"fields": ("payment_tx_hash", "completion_tx_hash", "cancellation_tx_hash", "chain_confirmed_at",
                              "chain_events", "chain_data")}),
        ("Cancellation", {"fields": ("status_before_cancellation", "cancellation_reason")}),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )
    readonly_fields = tuple(f for _, section in fieldsets for f in section["fields"])

    @admin.display(description="amount", ordering="amount")
    def amount_usdc(self, booking):
        return usdc(booking.amount)

    @admin.display(description="chain events")
    def chain_events(self, booking):
        events = ChainEvent.objects.filter(chain_booking_id=booking.chain_booking_id).order_by(
            "block_number", "log_index"
        )
        if not events:
            return "none stored"
        rows = format_html_join(
            "", "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (reverse("admin:chain_events_chainevent_change", args=[e.pk]), e.event_name, e.block_number,
                 e.tx_hash, e.status, e.last_error[:120])
                for e in events
            ),
        )
        return format_html(
            "<table><thead><tr><th>event</th><th>block</th><th>tx</th><th>status</th><th>last error</th></tr>"
            "</thead><tbody>{}</tbody></table>", rows,
        )

    def get_search_results(self, request, queryset, search_term):
        """Also find bookings by the tx hash of any of their chain events (refunds, replays, ...)."""
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lower()
        if term.startswith("0x") and len(term) == 66:
            by_event = ChainEvent.objects.filter(tx_hash=term).values("chain_booking_id")
            queryset |= self.model.objects.filter(Q(chain_booking_id__in=by_event))
        return queryset, may_have_duplicates


@admin.register(SignatureNonce)
class SignatureNonceAdmin(ConsoleModelAdmin):
    list_display = ("nonce", "kind", "booking", "created_at", "expires_at", "consumed_at")
    list_filter = ("kind", ("consumed_at", admin.EmptyFieldListFilter))
    search_fields = ("=nonce", "booking__uuid", "=consumed_tx_hash", "=digest")
    list_select_related = ("booking",)
    readonly_fields = ("nonce", "booking", "kind", "expires_at", "digest", "payload", "consumed_at",
                       "consumed_tx_hash", "created_at")

    def get_search_fields(self, request):
        # "=nonce" on a numeric column: a non-numeric term would be a database error, not "no match".
        term = request.GET.get("q", "").strip()
        if term and not term.isdigit():
            return tuple(f for f in self.search_fields if f != "=nonce")
        return self.search_fields


class _Echo:
    """csv.writer writes to this and gets each line back, so the export streams row by row
    (Django's documented pattern for large CSV files)."""

    def write(self, value):
        return value


@admin.register(PlatformFee)
class PlatformFeeAdmin(ConsoleModelAdmin):
    # Adds the "Export CSV" link (templates/admin/escrow/platformfee/change_list.html).
    change_list_template = "admin/escrow/platformfee/change_list.html"
    list_display = ("booking", "platform", "inviter", "provider", "tx_hash", "created_at")
    search_fields = ("booking__uuid", "=tx_hash")
    list_select_related = ("booking",)
    readonly_fields = ("booking", "platform", "inviter", "provider", "tx_hash", "created_at")
    fields = readonly_fields

    @admin.display(description="platform", ordering="platform_amount")
    def platform(self, fee):
        return usdc(fee.platform_amount)

    @admin.display(description="inviter", ordering="inviter_amount")
    def inviter(self, fee):
        return usdc(fee.inviter_amount)

    @admin.display(description="provider", ordering="provider_amount")
    def provider(self, fee):
        return usdc(fee.provider_amount)

    def get_urls(self):
        export = path("export.csv", self.admin_site.admin_view(self.export_csv), name="escrow_platformfee_export")
        return [export, *super().get_urls()]

    def export_csv(self, request):
        """The whole platform fee ledger as CSV, oldest first (escrow.earnings.fee_ledger_rows): any staff."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        writer = csv.writer(_Echo())
        response = StreamingHttpResponse((writer.writerow(row) for row in fee_ledger_rows()), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="platform-fee-ledger.csv"'
        return response


@admin.register(ProviderEarnings)
class ProviderEarningsAdmin(ConsoleModelAdmin):
    list_display = ("provider_address", "earned", "services_completed", "updated_at")
    search_fields = ("=provider_address",)
    readonly_fields = ("provider_address", "earned", "services_completed", "updated_at")
    fields = readonly_fields

    @admin.display(description="total earned", ordering="total_earned")
    def earned(self, earnings):
        return usdc(earnings.total_earned)



@admin.register(InviteCode)
class InviteCodeAdmin(ConsoleModelAdmin):
    list_display = ("code", "inviter_address", "created_at")
    search_fields = ("=code", "=inviter_address")
    readonly_fields = ("code", "inviter_address", "created_at")
    fields = readonly_fields


@admin.register(Referral)
class ReferralAdmin(ConsoleModelAdmin):
    """Who invited whom (bound for good when the invitee redeemed the code)."""

    list_display = ("invitee_address", "invite_code", "redeemed_at")
    search_fields = ("=invitee_address", "=invite_code__code", "=invite_code__inviter_address")
    readonly_fields = ("invitee_address", "invite_code", "redeemed_at")
    fields = readonly_fields
