"""Bookings, their audit trail, signature nonces, platform fees and provider earnings."""
import uuid as uuid_lib

from django.db import models
from eth_utils import keccak

from common.fields import Uint256Field


def chain_booking_id_for(booking_uuid) -> str:
    """DESIGN.md: chain_booking_id = keccak256(utf8(str(uuid))), as 0x-prefixed lower-case hex."""
    return "0x" + keccak(text=str(booking_uuid)).hex()


class BookingStatus(models.TextChoices):
    PENDING_PAYMENT = "PENDING_PAYMENT", "Pending payment"
    PAID = "PAID", "Paid"
    PENDING_COMPLETION = "PENDING_COMPLETION", "Pending completion"
    COMPLETED = "COMPLETED", "Completed"
    PENDING_CANCELLATION = "PENDING_CANCELLATION", "Pending cancellation"
    CANCELLED = "CANCELLED", "Cancelled"
    FAILED = "FAILED", "Failed"
    # The payment authorization ran out unused: nothing was ever escrowed. Kept apart from
    # CANCELLED (which means money moved on chain) and FAILED (a fault that needs staff).
    EXPIRED = "EXPIRED", "Expired"


class StatusSource(models.TextChoices):
    API = "api", "API"
    CHAIN = "chain", "Chain"
    RECONCILIATION = "reconciliation", "Reconciliation"
    ADMIN = "admin", "Admin"


class Booking(models.Model):
    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False)
    chain_booking_id = models.CharField(max_length=66, unique=True, editable=False)
    customer_address = models.CharField(max_length=42, db_index=True)
    provider_address = models.CharField(max_length=42, db_index=True)
    inviter_address = models.CharField(max_length=42, blank=True, default="")
    amount = Uint256Field(help_text="USDC base units (6 decimals)")
    platform_fee_rate = models.PositiveIntegerField(help_text="basis points")
    inviter_fee_rate = models.PositiveIntegerField(default=0, help_text="basis points")
    scheduled_at = models.DateTimeField()
    description = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(
        max_length=32, choices=BookingStatus.choices, default=BookingStatus.PENDING_PAYMENT
    )
    # Where a booking in PENDING_CANCELLATION returns to if its cancellation authorization expires unused.
    status_before_cancellation = models.CharField(max_length=32, choices=BookingStatus.choices, blank=True, default="")
    cancellation_reason = models.CharField(max_length=500, blank=True, default="")
    payment_tx_hash = models.CharField(max_length=66, blank=True, default="")
    completion_tx_hash = models.CharField(max_length=66, blank=True, default="")
    cancellation_tx_hash = models.CharField(max_length=66, blank=True, default="")
    chain_confirmed_at = models.DateTimeField(null=True, blank=True)
    chain_data = models.JSONField(default=dict, blank=True, help_text="raw decoded chain data of the latest event")
    # True while the booking has an open AttentionItem (the chain disagrees with what the
    # database expected, an event sequence the contract cannot produce, an open reconciliation
    # flag). Kept on the row, in the same transaction as the items, because auto-complete and
    # the console filter on it; the items say why (escrow.attention).
    needs_attention = models.BooleanField(default=False)
    status_changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        # Few indexes on purpose: the chain sync updates bookings in bulk (status, tx hash,
        # status_changed_at, needs_attention change together, so every index takes a new entry
        # per update). Status filters use the (status, scheduled_at) index; tx-hash and inviter
        # lookups are staff searches (case-insensitive, which a plain index cannot serve anyway).
        indexes = [
            models.Index(fields=["status", "scheduled_at"]),
            models.Index(
                fields=["needs_attention"], condition=models.Q(needs_attention=True), name="booking_needs_attention",
            ),
        ]

    def __str__(self):
        return f"Booking {self.uuid} ({self.status})"

    def save(self, *args, **kwargs):
        if not self.chain_booking_id:
            self.chain_booking_id = chain_booking_id_for(self.uuid)
        super().save(*args, **kwargs)


class AttentionKind(models.TextChoices):
    # The chain's payment differs from the booking (parties, amount, rates); the chain still applies.
    CHAIN_MISMATCH = "CHAIN_MISMATCH", "Chain payment differs"
    # An event sequence the contract cannot produce (e.g. a completion without a known payment).
    CHAIN_ANOMALY = "CHAIN_ANOMALY", "Unexpected event sequence"
    # An open reconciliation flag (reconciliation raises and withdraws these).
    RECONCILIATION = "RECONCILIATION", "Reconciliation flag"


#: Kinds the chain sync raises: each reason at most once per booking, acknowledged or not.
CHAIN_ATTENTION_KINDS = (AttentionKind.CHAIN_MISMATCH, AttentionKind.CHAIN_ANOMALY)


class AttentionItem(models.Model):
    """One reason a booking needs staff: raised by the chain sync or reconciliation, closed by
    staff acknowledging it (or by reconciliation withdrawing its flag's item), never deleted."""

    booking = models.ForeignKey(Booking, on_delete=models.CASCADE, related_name="attention_items")
    kind = models.CharField(max_length=32, choices=AttentionKind.choices)
    reason = models.TextField()
    raised_at = models.DateTimeField()
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=200, blank=True, default="")
    acknowledged_why = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["raised_at", "id"]
        indexes = [models.Index(fields=["booking", "kind"])]

    def __str__(self):
        state = "open" if self.acknowledged_at is None else f"acknowledged by {self.acknowledged_by}"
        return f"{self.get_kind_display()} ({state}): {self.reason}"

    @property
    def is_open(self) -> bool:
        return self.acknowledged_at is None


class BookingStatusChange(models.Model):
    booking = models.ForeignKey(Booking, on_delete=models.CASCADE, related_name="status_changes")
    from_status = models.CharField(max_length=32, choices=BookingStatus.choices, blank=True, default="")
    to_status = models.CharField(max_length=32, choices=BookingStatus.choices)
    source = models.CharField(max_length=32, choices=StatusSource.choices)
    actor = models.CharField(max_length=200, blank=True, default="")
    tx_hash = models.CharField(max_length=66, blank=True, default="")
    note = models.TextField(blank=True, default="")
    # False for a history line that moves nothing: a reverted transaction's decoded reason, or a
    # step the chain sync learned after the booking had moved past it (a payment stored after its
    # cancellation). Clients are told of moves only: the outbox trigger (notifications) skips these.
    # db_default: the chain sync inserts rows with SQL of its own.
    moves_booking = models.BooleanField(default=True, db_default=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.from_status or '∅'} → {self.to_status} ({self.source})"


class SignatureKind(models.TextChoices):
    PAYMENT = "payment", "Payment"
    CANCELLATION = "cancellation", "Cancellation"


class SignatureNonce(models.Model):
    nonce = Uint256Field(unique=True)
    # No index of its own: (booking, kind, expires_at) below serves every lookup by booking.
    booking = models.ForeignKey(Booking, on_delete=models.PROTECT, related_name="signatures", db_index=False)
    kind = models.CharField(max_length=20, choices=SignatureKind.choices)
    expires_at = models.DateTimeField(db_index=True)
    digest = models.CharField(max_length=66, help_text="EIP-712 digest that was signed")
    payload = models.JSONField(default=dict, help_text="the signed message fields")
    consumed_at = models.DateTimeField(null=True, blank=True)
    consumed_tx_hash = models.CharField(max_length=66, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["booking", "kind", "expires_at"])]

    def __str__(self):
        return f"{self.kind} nonce {self.nonce}"


class PlatformFee(models.Model):
    """What the platform (and inviter) earned from one booking; one row per booking at most."""

    booking = models.OneToOneField(Booking, on_delete=models.PROTECT, related_name="platform_fee")
    platform_amount = Uint256Field()
    inviter_amount = Uint256Field(default=0)
    provider_amount = Uint256Field(default=0)
    tx_hash = models.CharField(max_length=66)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"fee {self.platform_amount} on {self.booking_id}"


class ProviderEarnings(models.Model):
    provider_address = models.CharField(max_length=42, unique=True)
    total_earned = Uint256Field(default=0)
    services_completed = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "provider earnings"

    def __str__(self):
        return f"{self.provider_address}: {self.total_earned}"


class WalletToken(models.Model):
    """An API bearer token issued after Sign-In with Ethereum, bound to one wallet address.

    Only the SHA-256 of the token is stored: a database leak does not hand out sessions.
    """

    address = models.CharField(max_length=42, db_index=True, help_text="EIP-55 checksummed wallet address")
    token_hash = models.CharField(max_length=64, unique=True, help_text="sha256 hex of the bearer token")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"token for {self.address}"


class InviteCode(models.Model):
    """A code an inviter hands out (escrow.referrals). Any number of wallets may redeem it; each
    wallet redeems one code, once, and is then bound to its inviter for good (Referral)."""

    code = models.CharField(max_length=16, unique=True)
    inviter_address = models.CharField(max_length=42, db_index=True, help_text="EIP-55 checksummed")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"invite code {self.code} of {self.inviter_address}"


class Referral(models.Model):
    """A wallet bound to the inviter of the code it redeemed: the inviter of every booking it
    makes as customer (unless that inviter is the booking's provider). Never changed or deleted."""

    invitee_address = models.CharField(max_length=42, unique=True, help_text="EIP-55 checksummed")
    invite_code = models.ForeignKey(InviteCode, on_delete=models.PROTECT, related_name="referrals")
    redeemed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["redeemed_at", "id"]

    def __str__(self):
        return f"{self.invitee_address} invited with {self.invite_code.code}"
