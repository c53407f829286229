"""HTTP edge of disputes: the booking's customer opens one; its customer, its provider and staff
read it with its outcome. Same authentication, permissions, throttles and error answers as the
booking API (escrow.api); the rules are in reconciliation.disputes."""
from __future__ import annotations

import uuid

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.viewsets import ViewSet

from escrow.api import API_AUTHENTICATION
from escrow.cancellation import CUSTOMER
from escrow.models import Booking
from escrow.permissions import IsWalletOrStaff
from escrow.schema import refusals
from escrow.serializers import ErrorSerializer
from escrow.services import bookings_visible_to, require_role
from escrow.throttling import WalletWriteThrottle

from .disputes import open_dispute
from .models import Dispute
from .serializers import DisputeRequestSerializer, DisputeSerializer

_BOOKING_ID = OpenApiParameter("booking_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="booking UUID")


@extend_schema_view(
    retrieve=extend_schema(
        summary="The booking's dispute and its outcome (customer, provider, staff)",
        parameters=[_BOOKING_ID],
        responses={
            200: DisputeSerializer,
            **refusals(401, 403, 429),
            404: OpenApiResponse(ErrorSerializer, "No such booking visible to the caller, or no dispute on it"),
        },
    ),
    create=extend_schema(
        summary="Dispute a paid booking before it is paid out (customer only)",
        description=(
            "The booking leaves auto-complete and an operator decides how its amount is split between the "
            "customer, the provider, the platform and the inviter; the decision is paid out on chain and "
            "shows here. Refused (409) when a dispute was opened already, when the booking is not PAID, while "
            "a cancellation authorization of it can still be executed (dispute once it lapsed), and once its "
            "payout or a refund was sent. Throttled per wallet (WALLET_WRITE_THROTTLE_RATE)."
        ),
        parameters=[_BOOKING_ID],
        request=DisputeRequestSerializer,
        responses={201: DisputeSerializer, **refusals(400, 401, 403, 404, 409, 413, 415, 429)},
    ),
)
class BookingDisputeViewSet(ViewSet):
    authentication_classes = API_AUTHENTICATION
    permission_classes = [IsWalletOrStaff]

    def get_throttles(self):
        if self.action == "create":
            return [WalletWriteThrottle()]
        return super().get_throttles()

    def _booking(self, booking_id: str) -> Booking:
        try:
            return bookings_visible_to(self.request.user).get(uuid=uuid.UUID(booking_id))
        except (ValueError, Booking.DoesNotExist):
            raise NotFound("No booking with this id is visible to you.") from None

    def retrieve(self, request, booking_id=None):
        booking = self._booking(booking_id)
        try:
            dispute = Dispute.objects.select_related("booking").get(booking=booking)
        except Dispute.DoesNotExist:
            raise NotFound("No dispute was opened on this booking.") from None
        return Response(DisputeSerializer(dispute).data)

    def create(self, request, booking_id=None):
        booking = self._booking(booking_id)
        require_role(booking, request.user, {CUSTOMER}, "dispute it")
        serializer = DisputeRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dispute = open_dispute(booking, opened_by=request.user.address, **serializer.validated_data)
        return Response(DisputeSerializer(dispute).data, status=status.HTTP_201_CREATED)
