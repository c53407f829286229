"""`GET /api/transactions/{hash}/`: what the backend knows of a transaction (the edge of
reconciliation.transaction_lookup), mounted by bookme/urls.py. Signed-in wallets and staff only,
throttled per wallet: a lookup the database cannot answer spends the RPC node's quota."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from escrow.api import API_AUTHENTICATION, TX_RETRY_AFTER
from escrow.permissions import IsWalletOrStaff
from escrow.schema import refusals
from escrow.serializers import ErrorSerializer, RevertReasonSerializer
from escrow.services import normalize_tx_hash
from escrow.throttling import TransactionLookupThrottle

from .transaction_lookup import TRANSACTION_STATUSES, lookup_transaction, visible_to, without_others_bookings


class TouchedBookingSerializer(serializers.Serializer):
    booking = serializers.UUIDField(source="booking.uuid")
    status = serializers.CharField(source="booking.status", help_text="the booking's status now")
    events = serializers.ListField(
        child=serializers.CharField(), help_text="its escrow events in this transaction (none for a call that reverted "
        "or is not mined yet)",
    )


class OperatorTransactionSerializer(serializers.Serializer):
    purpose = serializers.CharField()
    status = serializers.CharField(help_text="PREPARING, SUBMITTED, MINED, REVERTED or FAILED")
    nonce = serializers.IntegerField(allow_null=True)


class TransactionReportSerializer(serializers.Serializer):
    tx_hash = serializers.CharField()
    status = serializers.ChoiceField(
        choices=TRANSACTION_STATUSES,
        help_text="unknown: the chain node has never seen it; pending: in its mempool; mined; reverted (see reason)",
    )
    block_number = serializers.IntegerField(allow_null=True)
    confirmations = serializers.IntegerField(
        allow_null=True, help_text="blocks from its block to head_block, both included (1: in the head block)"
    )
    head_block = serializers.IntegerField(allow_null=True, help_text="the head the confirmations are counted at")
    applied = serializers.BooleanField(help_text="its escrow events are stored and applied to the bookings")
    bookings = TouchedBookingSerializer(many=True, help_text="the caller's bookings it touches (staff: all)")
    reason = RevertReasonSerializer(allow_null=True, help_text="reverted: the contract's decoded error")
    operator_transaction = OperatorTransactionSerializer(
        allow_null=True, help_text="sent by the backend's operator account (auto-complete, refunds, ...)"
    )
    answered_from = serializers.ChoiceField(
        choices=("database", "node"), help_text="database: no chain node round trip was needed"
    )
    retry_after_seconds = serializers.IntegerField(
        allow_null=True, help_text="unknown/pending: ask again after this many seconds (also Retry-After)"
    )
    hint = serializers.CharField(allow_blank=True)


class TransactionView(APIView):
    authentication_classes = API_AUTHENTICATION
    permission_classes = [IsWalletOrStaff]
    throttle_classes = [TransactionLookupThrottle]

    @extend_schema(
        summary="What the backend knows of a transaction",
        description=(
            "unknown, pending (in the node's mempool), mined at block N with K confirmations (applied to which "
            "bookings), or reverted with the contract's decoded custom error (e.g. NonceAlreadyUsed, "
            "AuthorizationExpired). The database is read first (stored escrow events, the bookings' transactions, "
            "the operator account's sends); the chain node only for what it cannot say. A wallet sees a "
            "transaction it sent or one touching a booking where it is customer, provider or inviter (and any "
            "hash nobody knows: unknown); anything else is 404. Staff see everything. unknown/pending answers "
            "carry Retry-After: ask again then; a transaction still unknown a minute after it was sent was "
            "dropped: send it again."
        ),
        parameters=[
            OpenApiParameter(
                "tx_hash", OpenApiTypes.STR, OpenApiParameter.PATH, pattern="^0x[0-9a-fA-F]{64}$",
                description="0x + 64 hex digits (anything else: 400)",
            ),
            TX_RETRY_AFTER,
        ],
        responses={
            200: TransactionReportSerializer,
            202: TransactionReportSerializer,
            **refusals(400, 401, 403, 429, 503),
            404: OpenApiResponse(ErrorSerializer, "Not a transaction the caller may see"),
        },
    )
    def get(self, request, tx_hash: str):
        report = lookup_transaction(normalize_tx_hash(tx_hash))
        if not visible_to(request.user, report):
            raise NotFound("No transaction you may see has this hash.")
        body = TransactionReportSerializer(without_others_bookings(request.user, report)).data
        if report.retry_after_seconds is not None:
            return Response(body, status=202, headers={"Retry-After": str(report.retry_after_seconds)})
        return Response(body)
