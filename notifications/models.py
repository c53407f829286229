"""The outbox: one Notification per booking status change, written by the database itself.

A trigger on escrow's audit table (every status change, whatever moved it: API, chain, fast
path, reconciliation, console, a reorg moving a booking back, writes one BookingStatusChange)
inserts the Notification in the same transaction, so a rollback leaves none behind and no
writer can forget it. Escrow does not know this floor exists. An audit row that moves nothing
(from_status = to_status: a reverted transaction noted on the booking's history) is not a change
and gets none.

`seq` is the order clients see. It is not the row id: ids are taken at insert, and a
transaction holding a lower id can commit after one holding a higher id, so a client that
resumed "after id N" could miss it. The relay (notifications.relay) gives committed rows
their `seq` one at a time, in the order it finds them, so `seq` only grows in commit order
and "everything after seq N" never skips a row.
"""
from django.db import models


class Notification(models.Model):
    seq = models.BigIntegerField(null=True, blank=True, unique=True, help_text="publication order; set by the relay")
    status_change = models.OneToOneField(
        "escrow.BookingStatusChange", on_delete=models.CASCADE, related_name="notification"
    )
    booking = models.ForeignKey("escrow.Booking", on_delete=models.CASCADE, related_name="notifications")
    booking_uuid = models.UUIDField()
    kind = models.CharField(max_length=40, help_text="booking.created, or booking.<new status in lower case>")
    from_status = models.CharField(max_length=32, blank=True, default="")
    to_status = models.CharField(max_length=32)
    source = models.CharField(max_length=32)
    tx_hash = models.CharField(max_length=66, blank=True, default="")
    # The booking's parties when it changed: who may see this notification.
    customer_address = models.CharField(max_length=42)
    provider_address = models.CharField(max_length=42)
    inviter_address = models.CharField(max_length=42, blank=True, default="")
    created_at = models.DateTimeField(help_text="when the change was written (clock time inside its transaction)")
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["seq", "id"]
        indexes = [
            models.Index(fields=["id"], condition=models.Q(seq__isnull=True), name="notification_unpublished"),
            models.Index(fields=["customer_address", "seq"], name="notification_customer_seq"),
            models.Index(fields=["provider_address", "seq"], name="notification_provider_seq"),
            models.Index(fields=["inviter_address", "seq"], name="notification_inviter_seq"),
        ]

    def __str__(self):
        return f"#{self.seq} {self.kind} {self.booking_uuid}"
