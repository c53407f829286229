"""Webhooks for the marketplace application: endpoints operators manage in the console, one
delivery per (endpoint, outbox notification), and every attempt at sending it.

The fan-out (webhooks.fanout) follows the outbox by `Notification.seq` with its own cursor
(`FanOutCursor`, one row): creating the deliveries and moving the cursor happen in one
transaction, so each notification is fanned out exactly once. Deliveries of one booking to one
endpoint go out in `seq` order: only the oldest PENDING one of a pair is attempted
(webhooks.delivery).
"""
from __future__ import annotations

import secrets
import uuid

from django.db import models
from django.utils import timezone


def new_secret() -> str:
    """32 random bytes, hex: the HMAC key an endpoint's receiver verifies signatures with."""
    return "whsec_" + secrets.token_hex(32)


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


class WebhookEndpoint(models.Model):
    url = models.URLField(max_length=500, help_text="https:// (http:// only where WEBHOOK_ALLOW_HTTP is set)")
    secret = models.CharField(max_length=100, default=new_secret, editable=False)
    event_kinds = models.JSONField(default=list, blank=True, help_text="kinds sent; empty: every kind")
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.url}" + ("" if self.active else " (inactive)")

    def wants(self, kind: str) -> bool:
        return not self.event_kinds or kind in self.event_kinds


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"


class WebhookDelivery(models.Model):
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.PROTECT, related_name="deliveries")
    notification = models.ForeignKey(
        "notifications.Notification", on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    # Copied from the notification: the per-(endpoint, booking) order is checked on this table alone.
    booking = models.ForeignKey("escrow.Booking", on_delete=models.CASCADE, related_name="webhook_deliveries")
    seq = models.BigIntegerField()
    event_id = models.CharField(max_length=40, unique=True, default=new_event_id, editable=False)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # DEAD once `attempts` reaches this; a redelivery from the console grants another round.
    attempt_limit = models.PositiveIntegerField()
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # The claim of the worker sending it now (webhooks.delivery): nobody else sends it before
    # the lease expires, and only the holder of the token records the outcome.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # The last time an operator sent it again from the console (webhooks.delivery.redeliver).
    redelivered_at = models.DateTimeField(null=True, blank=True)
    redelivered_by = models.CharField(max_length=200, blank=True, default="")
    redelivery_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "notification"], name="webhook_delivery_once_per_endpoint"),
        ]
        indexes = [
            models.Index(
                fields=["endpoint", "booking", "seq"], condition=models.Q(status="PENDING"),
                name="webhook_delivery_pending_pair",
            ),
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="PENDING"), name="webhook_delivery_due"),
            models.Index(fields=["id"], condition=models.Q(status="DEAD"), name="webhook_delivery_dead"),
        ]

    def __str__(self):
        return f"{self.event_id} #{self.seq} → {self.endpoint_id} ({self.status})"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField()

    class Meta:
        ordering = ["attempted_at", "id"]

    def __str__(self):
        return f"{self.attempted_at:%Y-%m-%d %H:%M:%S} {self.status_code or self.error[:40]}"


class FanOutCursor(models.Model):
    """One row: the highest Notification.seq already fanned out to the endpoints."""

    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"fanned out up to #{self.last_seq}"


def event_kinds() -> list[str]:
    """Every kind a notification can have (the outbox trigger's names): booking.created and
    booking.<status in lower case>."""
    from escrow.models import BookingStatus

    return ["booking.created", *(f"booking.{status.lower()}" for status in BookingStatus.values)]
