"""Console pages of the escrow app: bookings (with their history, chain events, signatures, fees,
sent transactions and reconciliation flags), signature nonces, platform fees, provider earnings.

All read-only; operators act through actions that call reconciliation.services (see bookme/console.py).
"""
from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from common.console import ConsoleInline, ConsoleModelAdmin, actor_of, confirm_with_reason
from common.eth import usdc

from .selectors import stuck_bookings

from .models import Booking, BookingStatusChange, PlatformFee, ProviderEarnings, SignatureNonce



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


def _reconciliation_inlines():
    from reconciliation.models import ReconciliationFlag, SentTransaction

    class SentTransactionInline(ConsoleInline):
        model = SentTransaction
        fk_name = "booking"
        verbose_name_plural = "transactions sent by the backend"
        fields = ("created_at", "purpose", "status", "tx_hash", "nonce", "actor", "reason", "error")
        readonly_fields = fields

    class FlagInline(ConsoleInline):
        model = ReconciliationFlag
        verbose_name_plural = "reconciliation flags"
        fields = ("created_at", "kind", "database_status", "chain_status", "detail", "resolved_at", "resolved_by",
                  "resolution_note")
        readonly_fields = fields

    return [SentTransactionInline, FlagInline]


@admin.register(Booking)
class BookingAdmin(ConsoleModelAdmin):
    list_display = ("uuid", "status", "amount_usdc", "customer_address", "provider_address", "scheduled_at",
                    "status_changed_at", "needs_attention")
    list_filter = ("status", StuckFilter, "needs_attention")
    search_fields = ("uuid", "chain_booking_id", "=customer_address", "=provider_address", "=inviter_address",
                     "=payment_tx_hash", "=completion_tx_hash", "=cancellation_tx_hash")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = [StatusChangeInline, PlatformFeeInline, SignatureInline, *_reconciliation_inlines()]
    actions = ["reconcile_now", "acknowledge_attention", "rebuild_from_chain", "emergency_cancel"]
    fieldsets = (
        (None, {"fields": ("uuid", "chain_booking_id", "status", "status_changed_at", "needs_attention",
                           "attention_reason")}),
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
        from chain_events.models import ChainEvent

        events = ChainEvent.objects.filter(chain_booking_id=booking.chain_booking_id).order_by("block_number", "log_index")
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
            from chain_events.models import ChainEvent

            by_event = ChainEvent.objects.filter(tx_hash=term).values("chain_booking_id")
            queryset |= self.model.objects.filter(Q(chain_booking_id__in=by_event))
        return queryset, may_have_duplicates

    @admin.action(description="Reconcile now with the chain", permissions=["operate"])
    def reconcile_now(self, request, queryset):
        from reconciliation.services import reconcile_bookings

        bookings = list(queryset)
        report = reconcile_bookings(trigger="admin", actor=actor_of(request), booking_ids=[b.pk for b in bookings])
        for booking in bookings:
            self.log_change(request, booking, f"Reconcile now: report #{report.pk}: {report}")
        level = messages.SUCCESS if report.status == "OK" and not report.errors else messages.WARNING
        self.message_user(request, f"Reconciliation report #{report.pk}: {report}", level)

    @admin.action(description="Acknowledge what needs attention (the chain's state stands)…", permissions=["operate"])
    def acknowledge_attention(self, request, queryset):
        from reconciliation.services import acknowledge_attention

        def perform(booking, actor, reason):
            booking = acknowledge_attention(booking, actor=actor, reason=reason)
            return "still needs attention (open reconciliation flags)" if booking.needs_attention else ""

        return confirm_with_reason(
            self, request, queryset,
            title="Acknowledge attention",
            warning="The reasons these bookings are flagged for (a chain payment that differs from the booking, "
                    "an unexpected event sequence) are marked acknowledged and the bookings leave the attention "
                    "list: a paid one is completed by the operator when its service window passes. The chain's "
                    "state is already applied; nothing is sent. Open reconciliation flags are resolved on "
                    "their own page.",
            perform=perform,
            done="Acknowledged",
        )

    @admin.action(description="Rebuild from the chain (the database is ahead of it)…", permissions=["operate"])
    def rebuild_from_chain(self, request, queryset):
        from reconciliation.services import rebuild_booking_from_chain

        def perform(booking, actor, reason):
            before = booking.status
            booking = rebuild_booking_from_chain(booking, actor=actor, reason=reason)
            return f"{before} → {booking.status}" if booking.status != before else f"still {booking.status}"

        return confirm_with_reason(
            self, request, queryset,
            title="Rebuild from the chain",
            warning="The bookings' events are read again from the chain, events whose block left the chain are "
                    "marked removed, and each booking is set to what its events show (a paid booking the chain "
                    "never saw paid goes back to PENDING_PAYMENT). Use it when reconciliation flags the database "
                    "ahead of the chain and you have checked why. Their open reconciliation flags are resolved "
                    "with your reason. Nothing is sent to the chain.",
            perform=perform,
            done="Rebuilt",
        )

    @admin.action(description="Emergency cancel: refund the customer in full…", permissions=["operate"])
    def emergency_cancel(self, request, queryset):
        from reconciliation.services import emergency_cancel_booking

        def perform(booking, actor, reason):
            record = emergency_cancel_booking(booking, actor=actor, reason=reason)
            return f"emergencyCancelBooking tx {record.tx_hash} ({record.status})"

        return confirm_with_reason(
            self, request, queryset,
            title="Emergency cancel",
            warning="emergencyCancelBooking refunds the full amount to the customer from the operator account. "
                    "The booking becomes CANCELLED when the refund's log is processed. This cannot be undone.",
            perform=perform,
            done="Refund sent",
        )


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


@admin.register(PlatformFee)
class PlatformFeeAdmin(ConsoleModelAdmin):
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


@admin.register(ProviderEarnings)
class ProviderEarningsAdmin(ConsoleModelAdmin):
    list_display = ("provider_address", "earned", "services_completed", "updated_at")
    search_fields = ("=provider_address",)
    readonly_fields = ("provider_address", "earned", "services_completed", "updated_at")
    fields = readonly_fields

    @admin.display(description="total earned", ordering="total_earned")
    def earned(self, earnings):
        return usdc(earnings.total_earned)

