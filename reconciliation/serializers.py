"""Request and response shapes of the dispute API (reconciliation.api). Input serializers check
form (types, lengths, unknown fields); the rules themselves live in reconciliation.disputes."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.audit import MAX_REASON_LENGTH
from escrow.models import BookingStatus
from escrow.serializers import StrictSerializer, StringField

from .disputes import (
    DISPUTE_OUTCOMES,
    LINK_PATTERN,
    MAX_EVIDENCE_LENGTH,
    MAX_EVIDENCE_LINKS,
    MAX_LINK_LENGTH,
    decided_split,
    dispute_outcome,
    latest_resolution,
)
from .models import Dispute, DisputeStatus


@extend_schema_field({"type": "string", "pattern": f"^{LINK_PATTERN.pattern}$", "maxLength": MAX_LINK_LENGTH})
class EvidenceLinkField(StringField):
    """An http(s) link, printable ASCII without spaces (reconciliation.disputes.LINK_PATTERN)."""

    def __init__(self, **kwargs):
        super().__init__(max_length=MAX_LINK_LENGTH, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not LINK_PATTERN.fullmatch(value):
            raise serializers.ValidationError("Must be an http(s) URL of printable ASCII characters, without spaces.")
        return value


class EvidenceLinksField(serializers.ListField):
    """A list of EvidenceLinkField whose errors are a flat list of reasons naming the item, as the
    API's FieldErrors promise ({field: [reason, ...]}), not DRF's {index: [reason]}."""

    def __init__(self, **kwargs):
        super().__init__(child=EvidenceLinkField(), max_length=MAX_EVIDENCE_LINKS, **kwargs)

    def run_child_validation(self, data):
        try:
            return super().run_child_validation(data)
        except serializers.ValidationError as exc:
            reasons = [f"item {index + 1}: {reason}" for index, errors in exc.detail.items() for reason in errors]
            raise serializers.ValidationError(reasons) from None


class DisputeRequestSerializer(StrictSerializer):
    """Why the customer contests the booking, and what shows it (kept here, never on chain)."""

    reason = StringField(max_length=MAX_REASON_LENGTH)
    evidence = StringField(max_length=MAX_EVIDENCE_LENGTH, required=False, allow_blank=True, default="",
                           help_text="what happened, in the customer's words")
    links = EvidenceLinksField(required=False, default=list, help_text="links to photos, messages, receipts")


class DisputeDecisionSerializer(serializers.Serializer):
    customer = serializers.CharField(help_text="base units refunded to the customer, as a decimal string")
    provider = serializers.CharField(help_text="base units paid to the provider")
    platform = serializers.CharField(help_text="base units paid to the platform")
    inviter = serializers.CharField(help_text="base units paid to the inviter (0 without one)")
    reason = serializers.CharField(help_text="why the operator decided so")
    decided_at = serializers.DateTimeField()
    tx_hash = serializers.CharField(allow_null=True, help_text="the transaction carrying it to the chain")


class DisputeSerializer(serializers.ModelSerializer):
    booking = serializers.UUIDField(source="booking.uuid", read_only=True)
    status = serializers.ChoiceField(choices=DisputeStatus.choices, read_only=True,
                                     help_text="OPEN: waiting for an operator; DECIDED: the split is sent")
    outcome = serializers.SerializerMethodField(
        help_text="pending (the booking still holds the money), resolved (paid out with the decided split), "
                  "cancelled (by a cancellation or a refund instead), completed (paid out as a completion)",
    )
    booking_status = serializers.ChoiceField(source="booking.status", choices=BookingStatus.choices, read_only=True)
    links = serializers.ListField(child=serializers.CharField(), read_only=True)
    decision = serializers.SerializerMethodField(help_text="null until an operator decides")

    class Meta:
        model = Dispute
        fields = ["booking", "status", "outcome", "booking_status", "reason", "evidence", "links", "opened_at",
                  "decision"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=DISPUTE_OUTCOMES))
    def get_outcome(self, dispute) -> str:
        return dispute_outcome(dispute)

    @extend_schema_field(DisputeDecisionSerializer(allow_null=True))
    def get_decision(self, dispute) -> dict | None:
        split = decided_split(dispute)
        if split is None:
            return None
        sent = latest_resolution(dispute)
        return DisputeDecisionSerializer({
            "customer": str(split.customer), "provider": str(split.provider), "platform": str(split.platform),
            "inviter": str(split.inviter), "reason": dispute.decision_reason, "decided_at": dispute.decided_at,
            "tx_hash": sent.tx_hash or None if sent else None,
        }).data
