"""Reconciliation runs, staff flags, the transactions the backend sends, and emergency pauses.

- `ReconciliationReport`: one row per reconciliation run (what was checked, repaired, flagged).
- `ReconciliationFlag`: a difference reconciliation could not repair (e.g. the database says
  PAID and the chain has no booking); open until staff resolve it. The booking also gets
  `needs_attention` so it shows in the booking admin.
- `SentTransaction`: every transaction the operator account sends (emergency cancel, operator
  completion, pause), with its nonce, every hash it was broadcast under (fee bumps replace it
  under the same nonce), fees, outcome, and who asked for it and why.
- `OperatorNonce`: the next nonce of a sending account; its row lock serialises nonce allocation.
  The settle job stores what it last found about the account's nonces on the chain.
- `EmergencyPause`: who paused (or unpaused) the contract, why, when, with which transaction.
- `Dispute`: a customer contests a paid booking before its payout; an operator decides the split,
  which the operator account pays out with `resolveDispute` (reconciliation.disputes).
"""
from django.db import models

from common.fields import Uint256Field


class ReportStatus(models.TextChoices):
    RUNNING = "RUNNING", "Running"
    OK = "OK", "Finished"
    # Stopped early (RPC unavailable, ...): the counts cover what was done before the error.
    FAILED = "FAILED", "Stopped by an error"


class ReconciliationReport(models.Model):
    trigger = models.CharField(max_length=32, default="beat", help_text="beat, command, admin, test")
    actor = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=ReportStatus.choices, default=ReportStatus.RUNNING)
    chain_block = models.BigIntegerField(null=True, blank=True, help_text="block the chain state was read at")
    checked = models.PositiveIntegerField(default=0)
    in_agreement = models.PositiveIntegerField(default=0)
    repaired = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    expired = models.PositiveIntegerField(default=0, help_text="payment authorizations expired unused")
    cancellations_lapsed = models.PositiveIntegerField(
        default=0, help_text="cancellation authorizations expired unused"
    )
    errors = models.PositiveIntegerField(default=0, help_text="bookings that could not be checked or repaired")
    error_details = models.JSONField(default=list, blank=True)
    rpc_round_trips = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return (
            f"reconciliation {self.started_at:%Y-%m-%d %H:%M:%S} ({self.status}): {self.checked} checked, "
            f"{self.repaired} repaired, {self.flagged} flagged, {self.errors} errors"
        )


class FlagKind(models.TextChoices):
    # The database believes more happened than the chain shows (e.g. PAID, no booking on chain).
    DATABASE_AHEAD = "DATABASE_AHEAD", "Database ahead of the chain"
    # The chain is ahead but its logs could not be found or applied.
    UNREPAIRED = "UNREPAIRED", "Chain ahead, repair failed"
    # Database and chain disagree in a way that is neither ahead nor behind (e.g. COMPLETED vs CANCELLED).
    CONFLICT = "CONFLICT", "Database and chain disagree"


class ReconciliationFlag(models.Model):
    booking = models.ForeignKey("escrow.Booking", on_delete=models.CASCADE, related_name="reconciliation_flags")
    report = models.ForeignKey(
        ReconciliationReport, null=True, blank=True, on_delete=models.SET_NULL, related_name="flags"
    )
    kind = models.CharField(max_length=32, choices=FlagKind.choices)
    database_status = models.CharField(max_length=32)
    chain_status = models.CharField(max_length=16)
    chain_block = models.BigIntegerField(null=True, blank=True)
    detail = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=200, blank=True, default="")
    resolution_note = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One open flag per booking and kind: reruns do not pile up duplicates.
            models.UniqueConstraint(
                fields=["booking", "kind"], condition=models.Q(resolved_at__isnull=True),
                name="reconciliation_flag_one_open",
            ),
        ]

    def __str__(self):
        return f"{self.kind} on booking {self.booking_id}: db {self.database_status}, chain {self.chain_status}"


class TxPurpose(models.TextChoices):
    EMERGENCY_CANCEL = "emergency_cancel", "Emergency cancel (refund)"
    OPERATOR_COMPLETE = "operator_complete", "Operator completion"
    PAUSE = "pause", "Pause contract"
    UNPAUSE = "unpause", "Unpause contract"
    # A zero-value transfer to itself that uses a nonce no transaction of ours holds any more
    # (dropped, or its block left the chain), so the account's later transactions can mine.
    NONCE_FILL = "nonce_fill", "Nonce fill"
    # resolveDispute: a disputed booking paid out with the split an operator decided.
    DISPUTE_RESOLUTION = "dispute_resolution", "Dispute resolution"
    OTHER = "other", "Other"


class TxStatus(models.TextChoices):
    PREPARING = "PREPARING", "Preparing"  # row written, nothing broadcast yet
    SUBMITTED = "SUBMITTED", "Submitted"  # broadcast, waiting for a receipt
    MINED = "MINED", "Mined"  # receipt status 1
    REVERTED = "REVERTED", "Reverted"  # mined with receipt status 0
    FAILED = "FAILED", "Failed"  # never broadcast (estimate reverted, RPC refused) or given up


class SentTransaction(models.Model):
    purpose = models.CharField(max_length=32, choices=TxPurpose.choices)
    booking = models.ForeignKey(
        "escrow.Booking", null=True, blank=True, on_delete=models.SET_NULL, related_name="sent_transactions"
    )
    orphan = models.ForeignKey(
        "chain_events.Orphan", null=True, blank=True, on_delete=models.SET_NULL, related_name="sent_transactions"
    )
    chain_id = models.PositiveBigIntegerField()
    from_address = models.CharField(max_length=42)
    to_address = models.CharField(max_length=42)
    data = models.TextField(help_text="calldata, 0x hex")
    nonce = models.PositiveBigIntegerField(null=True, blank=True)
    gas_limit = models.PositiveBigIntegerField(null=True, blank=True)
    max_fee_per_gas = Uint256Field(null=True, blank=True)
    max_priority_fee_per_gas = Uint256Field(null=True, blank=True)
    # The hash currently expected to mine (the latest broadcast) and every hash broadcast under this nonce.
    tx_hash = models.CharField(max_length=66, blank=True, default="", db_index=True)
    tx_hashes = models.JSONField(default=list, blank=True)
    replacements = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=16, choices=TxStatus.choices, default=TxStatus.PREPARING, db_index=True)
    block_number = models.PositiveBigIntegerField(null=True, blank=True)
    # The block the receipt named: the settle job compares it with the chain while the block can still be reorged.
    block_hash = models.CharField(max_length=66, blank=True, default="")
    gas_used = models.PositiveBigIntegerField(null=True, blank=True)
    effective_gas_price = Uint256Field(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    actor = models.CharField(max_length=200, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    mined_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["from_address", "status", "nonce"], name="sent_tx_account_status")]

    def __str__(self):
        return f"{self.purpose} nonce {self.nonce} ({self.status}) {self.tx_hash[:12]}"


class OperatorNonce(models.Model):
    """Next nonce to use for one sending account on one chain (row-locked while a nonce is taken)."""

    chain_id = models.PositiveBigIntegerField()
    address = models.CharField(max_length=42)
    next_nonce = models.PositiveBigIntegerField(default=0)
    # At the settle job's last check: nonces below the account's highest unmined transaction of
    # ours that neither the chain nor any transaction of ours holds. The node holds every later
    # transaction back until they are used (metric bookme_operator_nonce_gap).
    nonce_gap = models.PositiveIntegerField(default=0)
    checked_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain_id", "address"], name="operator_nonce_unique_account")]

    def __str__(self):
        return f"{self.address} next nonce {self.next_nonce}"


class PauseAction(models.TextChoices):
    PAUSE = "pause", "Pause"
    UNPAUSE = "unpause", "Unpause"


class EmergencyPause(models.Model):
    action = models.CharField(max_length=16, choices=PauseAction.choices, default=PauseAction.PAUSE)
    actor = models.CharField(max_length=200)
    reason = models.TextField()
    transaction = models.ForeignKey(SentTransaction, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    succeeded = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.action} by {self.actor} at {self.created_at:%Y-%m-%d %H:%M}"


class DisputeStatus(models.TextChoices):
    OPEN = "OPEN", "Open: waiting for an operator"
    # The operator's split is recorded and sent (resolveDispute); the booking ends when its
    # BookingCancelled log is processed. A send that failed can be decided again.
    DECIDED = "DECIDED", "Decided: the split is sent to the chain"


class Dispute(models.Model):
    """A customer contests a paid booking before it is paid out: the booking leaves auto-complete
    (an operator decides instead) and shows in the console. One per booking. The outcome is the
    booking's own: CANCELLED with the decided split once the resolution is on chain."""

    booking = models.OneToOneField("escrow.Booking", on_delete=models.PROTECT, related_name="dispute")
    opened_by = models.CharField(max_length=42, help_text="the customer's address")
    reason = models.TextField()
    evidence = models.TextField(blank=True, default="", help_text="the customer's account of what happened")
    links = models.JSONField(default=list, blank=True, help_text="http(s) links the customer gave as evidence")
    status = models.CharField(max_length=16, choices=DisputeStatus.choices, default=DisputeStatus.OPEN)
    opened_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The operator's decision: four parts in USDC base units that sum to the booking's amount.
    customer_amount = Uint256Field(null=True, blank=True)
    provider_amount = Uint256Field(null=True, blank=True)
    platform_amount = Uint256Field(null=True, blank=True)
    inviter_amount = Uint256Field(null=True, blank=True)
    decided_by = models.CharField(max_length=200, blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-opened_at"]

    def __str__(self):
        return f"dispute #{self.pk} on booking {self.booking_id} ({self.status})"


class LedgerReport(models.Model):
    """One ledger check (reconciliation.ledger): the money and the operator's nonces as the
    database has them against the chain, all at one pinned block. `mismatches` names the booking
    or account of each difference with both figures (USDC base units as decimal strings);
    `figures` holds the totals compared."""

    trigger = models.CharField(max_length=32, default="beat", help_text="beat, command, test")
    chain_block = models.BigIntegerField(null=True, blank=True, help_text="the pinned block every figure is read at")
    ok = models.BooleanField(default=False, help_text="finished and found no difference")
    mismatch_count = models.PositiveIntegerField(default=0)
    mismatches = models.JSONField(default=list, blank=True)
    figures = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="", help_text="why the check could not finish (RPC, ...)")
    rpc_round_trips = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        outcome = "OK" if self.ok else (self.error[:60] or f"{self.mismatch_count} mismatches")
        return f"ledger check at block {self.chain_block} ({self.started_at:%Y-%m-%d %H:%M:%S}): {outcome}"
