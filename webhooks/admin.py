"""Console pages of the webhooks: endpoints (operators add and edit them; the URL is checked by
webhooks.url_safety when saved; deactivate with a reason), deliveries with every attempt, and
"send again" for DEAD deliveries. Staff who are not operators only read."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from common.console import ConsoleInline, ConsoleModelAdmin, reason_action

from . import delivery, endpoints, tasks
from .models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint, event_kinds
from .url_safety import UnsafeWebhookUrl, resolve_target


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https",
                         help_text="https:// (http:// only where WEBHOOK_ALLOW_HTTP is set)")
    event_kinds = forms.MultipleChoiceField(
        choices=[(kind, kind) for kind in event_kinds()], required=False, widget=forms.CheckboxSelectMultiple,
        help_text="The kinds sent to this URL. None ticked: every kind.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "description", "event_kinds", "active")

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            resolve_target(url)
        except UnsafeWebhookUrl as exc:
            raise forms.ValidationError(f"This URL cannot receive webhooks: {exc}") from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ConsoleModelAdmin):
    form = WebhookEndpointForm
    list_display = ("url", "active", "event_kinds", "description", "created_at")
    list_filter = ("active",)
    search_fields = ("url", "description")
    actions = ["deactivate"]

    def has_add_permission(self, request, obj=None):
        return self.has_operate_permission(request)

    def has_change_permission(self, request, obj=None):
        return self.has_operate_permission(request)

    def get_readonly_fields(self, request, obj=None):
        # The secret is generated when the endpoint is added, then shown for the receiver's configuration.
        return ("secret", "created_at") if obj is not None else ()

    @reason_action(
        description="Deactivate (send nothing more)…",
        title="Deactivate endpoint",
        warning="No delivery is made for these endpoints from now on, and their deliveries still waiting "
                "are held until an operator ticks 'active' again.",
        done="Deactivated",
        eligible={"active": True},
    )
    def deactivate(endpoint, actor, reason):
        endpoints.deactivate(endpoint)
        return ""


class AttemptInline(ConsoleInline):
    model = WebhookAttempt
    verbose_name_plural = "attempts"
    fields = ("attempted_at", "status_code", "error", "duration_ms")
    readonly_fields = fields
    show_change_link = False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ConsoleModelAdmin):
    list_display = ("event_id", "endpoint", "seq", "kind", "booking", "status", "attempts", "next_attempt_at",
                    "last_status_code", "delivered_at")
    list_filter = ("status", "endpoint")
    search_fields = ("=event_id", "booking__uuid")
    list_select_related = ("endpoint", "notification", "booking")
    inlines = [AttemptInline]
    actions = ["redeliver"]
    readonly_fields = ("event_id", "endpoint", "notification", "booking", "seq", "status", "attempts",
                       "attempt_limit", "next_attempt_at", "delivered_at", "last_status_code", "last_error",
                       "created_at", "redelivered_at", "redelivered_by", "redelivery_reason")
    fields = readonly_fields

    @admin.display(description="kind")
    def kind(self, obj):
        return obj.notification.kind

    @reason_action(
        description="Send again (DEAD deliveries)…",
        title="Send again",
        warning="Each DEAD delivery goes back to PENDING with another round of attempts (the earlier ones "
                "stay counted and listed). The receiver may get an event it already saw; it recognises it "
                "by its id. A later event of the same booking may already have been delivered.",
        done="Queued again",
        eligible={"status": DeliveryStatus.DEAD},
    )
    def redeliver(webhook_delivery, actor, reason):
        pair = delivery.redeliver(webhook_delivery, actor=actor, reason=reason)
        tasks.queue_deliveries(delivery.heads([pair]))
        return "PENDING again"
