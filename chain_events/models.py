"""The chain event store, the sync cursor with its unfinalized block hashes, and orphans.

One `ChainEvent` row per log of our contract, unique on (chain id, tx hash, log index): the
scanner, the receipt fast path and replays all write through the same key, so a log is
stored once however often it is seen. Rows are written with raw SQL in bulk by
`chain_events.store`; the ORM is for reading, the admin and tests.
"""
from django.db import models
from django.db.models import Q

from common.fields import Uint256Field


class EventStatus(models.TextChoices):
    # Stored, not yet applied (only ever visible outside a range transaction after a replay
    # or a reorg re-insert that has not been processed yet).
    PENDING = "PENDING", "Pending"
    # Its booking's state reflects it.
    PROCESSED = "PROCESSED", "Processed"
    # The last attempt failed; retried automatically at next_retry_at (exponential backoff).
    FAILED = "FAILED", "Failed"
    # Queued for a retry by staff (admin action / replay); due at once, attempts count on.
    RETRY = "RETRY", "Retry requested"
    # Failed CHAIN_EVENT_MAX_ATTEMPTS times: needs staff (admin shows it with a retry action).
    DEAD_LETTER = "DEAD_LETTER", "Dead letter"
    # Its block left the canonical chain (reorg); its effects were undone.
    REMOVED = "REMOVED", "Removed by reorg"


UNSETTLED_STATUSES = (EventStatus.PENDING, EventStatus.FAILED, EventStatus.RETRY, EventStatus.DEAD_LETTER)


class EventSource(models.TextChoices):
    SCANNER = "scanner", "Block-range scanner"
    RECEIPT = "receipt", "Receipt fast path"
    REPLAY = "replay", "Replay"
    RECONCILIATION = "reconciliation", "Reconciliation"


class ChainEvent(models.Model):
    chain_id = models.PositiveBigIntegerField()
    contract_address = models.CharField(max_length=42, help_text="lower-case hex")
    block_number = models.PositiveBigIntegerField()
    block_hash = models.CharField(max_length=66)
    tx_hash = models.CharField(max_length=66)
    tx_index = models.PositiveIntegerField(default=0)
    log_index = models.PositiveIntegerField()
    event_name = models.CharField(max_length=64)
    # Decoded with eth_abi; uint256 values as decimal strings, addresses lower-case hex.
    args = models.JSONField(default=dict)
    chain_booking_id = models.CharField(max_length=66)
    status = models.CharField(max_length=16, choices=EventStatus.choices, default=EventStatus.PENDING)
    source = models.CharField(max_length=20, choices=EventSource.choices, default=EventSource.SCANNER)
    retry_count = models.PositiveSmallIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    processed_at = models.DateTimeField(null=True, blank=True)
    # Staff closing a dead letter by hand (e.g. fixed the booking in the admin): who, why, when.
    # The status stays DEAD_LETTER (the event was never applied); resolved_at takes it off the
    # waiting list.
    # db_default too: chain_events.store inserts rows with raw SQL that does not name them.
    resolved_by = models.CharField(max_length=200, blank=True, default="", db_default="")
    resolution_note = models.TextField(blank=True, default="", db_default="")
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["block_number", "log_index"]
        constraints = [
            models.UniqueConstraint(fields=["chain_id", "tx_hash", "log_index"], name="chain_event_unique_log"),
        ]
        indexes = [
            models.Index(fields=["chain_id", "contract_address", "block_number"], name="chain_event_block"),
            # A plain index (db_index on a CharField would add a LIKE twin nobody uses).
            models.Index(fields=["chain_booking_id"], name="chain_event_booking"),
            # Small partial index: only the events that still need work (retries, admin lists).
            models.Index(
                fields=["status", "next_retry_at"],
                name="chain_event_unsettled",
                condition=Q(status__in=["PENDING", "FAILED", "RETRY", "DEAD_LETTER"]),
            ),
        ]

    def __str__(self):
        return f"{self.event_name} {self.chain_booking_id[:10]}… block {self.block_number} ({self.status})"


class SyncCursor(models.Model):
    """How far the scanner got on one (chain, contract): everything ≤ last_block is stored."""

    chain_id = models.PositiveBigIntegerField()
    contract_address = models.CharField(max_length=42, help_text="lower-case hex")
    last_block = models.BigIntegerField(help_text="last fully scanned block")
    last_block_hash = models.CharField(max_length=66, blank=True, default="")
    head_block = models.BigIntegerField(null=True, blank=True, help_text="node head at the last scan")
    finalized_block = models.BigIntegerField(null=True, blank=True, help_text="final at the last scan")
    range_size = models.PositiveIntegerField(default=1000, help_text="adaptive eth_getLogs range, in blocks")
    # A reorg deeper than the unfinalized window stops the scanner until staff look at it
    # (chain_events.cursor.rewind_cursor or `manage.py scan_chain --rewind-to N`).
    halted = models.BooleanField(default=False)
    halt_reason = models.TextField(blank=True, default="")
    halted_at = models.DateTimeField(null=True, blank=True)
    # Why the last scan pass failed (RPC, a booking whose rebuild cannot be applied, ...); the
    # next pass starts again from the cursor. Cleared by a pass that completes.
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_scan_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain_id", "contract_address"], name="sync_cursor_unique_contract"),
        ]

    def __str__(self):
        return f"chain {self.chain_id} {self.contract_address[:10]}… at block {self.last_block}"

    @property
    def lag_blocks(self) -> int | None:
        return None if self.head_block is None else max(0, self.head_block - self.last_block)


class BlockHash(models.Model):
    """Hash of a scanned block that is not final yet (the reorg detection window)."""

    cursor = models.ForeignKey(SyncCursor, on_delete=models.CASCADE, related_name="block_hashes")
    number = models.BigIntegerField()
    hash = models.CharField(max_length=66)
    parent_hash = models.CharField(max_length=66)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["cursor", "number"], name="block_hash_unique_number")]

    def __str__(self):
        return f"#{self.number} {self.hash[:10]}…"


class OrphanStatus(models.TextChoices):
    OPEN = "OPEN", "Open"
    RESOLVED = "RESOLVED", "Resolved"
    IGNORED = "IGNORED", "Ignored"


class Orphan(models.Model):
    """A booking id seen on chain that the database does not know (money with no booking).

    Evidence comes from its first event (normally the payment). `chain_status` is derived
    from its events like a booking's (escrow.chain_state.ChainStatus) and kept current by the
    events' consumer (escrow.chain_consumer); `status` is the staff/reconciliation workflow.
    The consumer only ever sets it to RESOLVED when the chain shows the money left the escrow
    (cancelled/refunded or completed), recording resolved_by="chain", and reopens such a
    resolution if a reorg removes that event.
    """

    chain_id = models.PositiveBigIntegerField()
    contract_address = models.CharField(max_length=42)
    chain_booking_id = models.CharField(max_length=66)
    event = models.ForeignKey(ChainEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    event_name = models.CharField(max_length=64)
    customer_address = models.CharField(max_length=42, blank=True, default="")
    provider_address = models.CharField(max_length=42, blank=True, default="")
    amount = Uint256Field(null=True, blank=True)
    block_number = models.PositiveBigIntegerField()
    tx_hash = models.CharField(max_length=66)
    chain_status = models.CharField(max_length=16, default="NONE")
    status = models.CharField(max_length=16, choices=OrphanStatus.choices, default=OrphanStatus.OPEN)
    resolved_by = models.CharField(max_length=32, blank=True, default="")
    resolved_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["chain_id", "contract_address", "chain_booking_id"], name="orphan_unique_booking_id"
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="orphan_status")]

    def __str__(self):
        return f"orphan {self.chain_booking_id[:10]}… ({self.status}, chain {self.chain_status})"

    #: The fields `move_to` changes (for save(update_fields=...)).
    WORKFLOW_FIELDS = ("status", "resolved_by", "resolved_at", "note")

    def move_to(self, status: str, note_line: str, *, by: str = "", at=None) -> list[str]:
        """Set the workflow status (resolved by whom and when; blank when reopened) and add
        `note_line` to the note. Returns the changed field names."""
        self.status, self.resolved_by, self.resolved_at = status, by[:32], at
        self.note = (self.note + "\n" + note_line).strip()
        return list(self.WORKFLOW_FIELDS)
