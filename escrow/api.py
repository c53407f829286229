"""HTTP edge of the escrow app: parse and check the request, call escrow.services, shape the answer.

Access: a wallet signed in with SIWE (`Authorization: Bearer <token>`) acts on bookings where
it is the customer; as provider it can read them and request cancellation. Staff (Django
session) can read every booking and act on none (they work in the admin). Anyone else gets
404 for a booking, anonymous callers 401.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from django.conf import settings
from django.db.models import prefetch_related_objects
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from .authentication import NOT_LOADED, WalletTokenAuthentication, booking_loaded_with_token, is_staff_user, is_wallet
from .cancellation import CUSTOMER, PROVIDER
from .earnings import bookings_with_earnings, day_totals, fee_ledger_days, fee_ledger_totals, wallet_earnings
from .models import Booking, InviteCode
from .permissions import IsWallet, IsWalletOrStaff
from .referrals import create_invite_code, invite_code_named, invite_codes_of, redeem_invite_code
from .schema import refusals
from .serializers import (
    BookingCreateSerializer,
    BookingSerializer,
    CancellationAuthorizationSerializer,
    CancellationRequestSerializer,
    ErrorSerializer,
    FeeLedgerSerializer,
    InviteCodeSerializer,
    PaymentAuthorizationSerializer,
    RedeemInviteCodeSerializer,
    ReferralSerializer,
    SignInNonceSerializer,
    SignInSerializer,
    StrictSerializer,
    TransactionSubmissionSerializer,
    TransactionSubmitSerializer,
    WalletEarningsSerializer,
    WalletSessionSerializer,
    WalletTokenSerializer,
    payment_authorization_body,
)
from .services import (
    actor_label,
    bookings_visible_to,
    create_booking,
    issue_payment_authorization,
    request_cancellation,
    require_role,
    submit_transaction,
)
from .siwe import issue_sign_in_nonce, verify_sign_in
from .throttling import SignInThrottle, WalletAuthorizationThrottle, WalletWriteThrottle
from .wallet_tokens import issue_wallet_token, revoke_wallet_token

API_AUTHENTICATION = [WalletTokenAuthentication, SessionAuthentication]

_BOOKING_ID = OpenApiParameter("booking_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="booking UUID")
# The answer about a transaction not mined (or not confirmed) yet says when to ask again.
TX_RETRY_AFTER = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[202],
    description="seconds to wait before asking again about a transaction not mined (or confirmed) yet",
)


class EmptyBodySerializer(StrictSerializer):
    """Endpoints that take no input still refuse fields (and malformed JSON)."""


def _check_empty_body(request) -> None:
    data = request.data
    if isinstance(data, Mapping) and not data:
        return  # the usual case (no body, or {}): nothing the serializer could refuse
    EmptyBodySerializer(data=data).is_valid(raise_exception=True)


class BookingPagination(PageNumberPagination):
    """50 bookings a page. `page` is a page number (1, 2, ...), as the schema says; anything else
    is a 404 like a page past the last. DRF's own parsing also took "", "last", whatever int()
    reads ("01", "+1", " 1") and a repeated `page`."""

    page_size = 50
    _PAGE_NUMBER = re.compile(r"[1-9][0-9]*")

    def get_page_number(self, request, paginator):
        given = request.query_params.getlist(self.page_query_param)
        if not given:
            return 1
        if len(given) > 1 or not self._PAGE_NUMBER.fullmatch(given[0]):
            raise NotFound(self.invalid_page_message)
        return int(given[0])

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
        return parameters


@extend_schema_view(
    list=extend_schema(
        summary="The caller's bookings (as customer or provider; staff: all)",
        responses={
            200: BookingSerializer(many=True),
            **refusals(401, 403),
            404: OpenApiResponse(ErrorSerializer, "No such page"),
        },
    ),
    retrieve=extend_schema(
        summary="One booking with its status history",
        parameters=[_BOOKING_ID],
        responses={200: BookingSerializer, **refusals(401, 403, 404)},
    ),
)
class BookingViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet):
    authentication_classes = API_AUTHENTICATION
    # On a booking's URL the wallet token and the booking come from one query (see WalletTokenAuthentication).
    load_booking_with_wallet_token = True
    permission_classes = [IsWalletOrStaff]
    serializer_class = BookingSerializer
    pagination_class = BookingPagination
    lookup_url_kwarg = "booking_id"
    lookup_value_regex = "[^/]+"
    queryset = Booking.objects.none()  # for the schema generator; get_queryset decides

    def get_queryset(self):
        queryset = bookings_visible_to(self.request.user)
        if self.action in ("list", "retrieve"):
            queryset = queryset.prefetch_related("status_changes")
        return queryset

    def get_throttles(self):
        if self.action == "create":
            return [WalletWriteThrottle()]
        return super().get_throttles()

    def get_object(self) -> Booking:
        try:
            booking_uuid = uuid.UUID(self.kwargs["booking_id"])
        except ValueError:
            raise NotFound("No booking with this id: booking ids are UUIDs.") from None
        booking = booking_loaded_with_token(self.request, booking_uuid)
        if booking is NOT_LOADED:
            try:
                return self.get_queryset().get(uuid=booking_uuid)
            except Booking.DoesNotExist:
                booking = None
        if booking is None:
            raise NotFound("No booking with this id is visible to you.")
        if self.action == "retrieve":
            prefetch_related_objects([booking], "status_changes")
        return booking

    @extend_schema(
        summary="Book a provider; the signed-in wallet is the customer",
        description=(
            "Amount: a decimal string of whole USDC (\"100.50\", at most 6 decimals) or an integer of "
            "base units. Neither the inviter nor the fee rates are chosen by the client: the inviter is the one "
            "whose invite code the wallet redeemed (none when that is the provider), at 500 + 500 bps; 1000 bps "
            "with no inviter (settings DEFAULT_*_FEE_RATE). Refused with a 400 besides what the schema states: "
            "scheduled_at in the past or more than BOOKING_MAX_DAYS_AHEAD days ahead, the provider being the "
            "customer, the escrow contract or the USDC contract. Refused with a 409 while the wallet has "
            "MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET bookings waiting for payment, or the provider "
            "MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER."
        ),
        request=BookingCreateSerializer,
        responses={
            201: BookingSerializer,
            **refusals(400, 401, 403, 413, 415, 429),
            409: OpenApiResponse(ErrorSerializer, "The wallet or the provider has as many unpaid bookings as allowed"),
        },
    )
    def create(self, request):
        if not is_wallet(request.user):
            raise PermissionDenied("Only a signed-in wallet can book; it becomes the booking's customer.")
        serializer = BookingCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        booking = create_booking(
            customer=request.user.address, actor=actor_label(request.user), **serializer.validated_data
        )
        return Response(BookingSerializer(booking).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Sign a BookingAuthorization for createAndPayBooking (customer only)",
        description=(
            "Each call signs a fresh authorization (new nonce, expiry AUTHORIZATION_TTL_SECONDS); nothing "
            "is re-served. Allowed while the booking is PENDING_PAYMENT, or EXPIRED with its scheduled time "
            "still ahead (it goes back to PENDING_PAYMENT, within the unpaid-booking caps of booking: 409 "
            "beyond them). Throttled per wallet (AUTHORIZATION_THROTTLE_RATE)."
        ),
        parameters=[_BOOKING_ID],
        request=None,
        responses={200: PaymentAuthorizationSerializer, **refusals(400, 401, 403, 404, 409, 413, 415, 429)},
    )
    @action(detail=True, methods=["post"], url_path="authorize-payment", throttle_classes=[WalletAuthorizationThrottle])
    def authorize_payment(self, request, booking_id=None):
        booking = self.get_object()
        require_role(booking, request.user, {CUSTOMER}, "authorize its payment")
        _check_empty_body(request)
        signed = issue_payment_authorization(booking, actor=actor_label(request.user))
        return Response(payment_authorization_body(signed))

    @extend_schema(
        summary="Request cancellation: sign a CancellationAuthorization for cancelBooking (customer or provider)",
        description=(
            "Moves a PAID or PENDING_COMPLETION booking to PENDING_CANCELLATION and signs the payout split "
            "of the cancellation policy: the provider cancelling refunds the customer fully; the customer "
            "cancelling gets a full refund more than 24 h before the scheduled time, 50 % from 24 h to 2 h "
            "before, nothing later (all configurable). The rest is paid out like a completion. Refused (409) "
            "while an earlier cancellation authorization is still valid. Throttled per wallet."
        ),
        parameters=[_BOOKING_ID],
        request=CancellationRequestSerializer,
        responses={200: CancellationAuthorizationSerializer, **refusals(400, 401, 403, 404, 409, 413, 415, 429)},
    )
    @action(
        detail=True, methods=["post"], url_path="request-cancellation", throttle_classes=[WalletAuthorizationThrottle]
    )
    def request_cancellation(self, request, booking_id=None):
        booking = self.get_object()
        role = require_role(booking, request.user, {CUSTOMER, PROVIDER}, "request its cancellation")
        serializer = CancellationRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        signed, terms = request_cancellation(
            booking, requested_by=role, reason=serializer.validated_data["reason"], actor=actor_label(request.user)
        )
        body = CancellationAuthorizationSerializer(
            {
                **signed.__dict__,
                "ethers": signed.ethers,
                "booking_status": signed.record.booking.status,
                "policy_tier": terms.tier,
                "refund_bps": terms.refund_bps,
                "split": {k: str(v) for k, v in terms.split.__dict__.items()},
            }
        ).data
        return Response(body)

    @extend_schema(
        summary="Report the transaction sent for this booking (customer or provider)",
        description=(
            "Fetches the receipt at once instead of waiting for the scanner. 202 {status: pending} while it "
            "is in the node's mempool (or mined below the confirmation depth), 202 {status: unknown} while the "
            "node has never seen it: both with Retry-After and retry_after_seconds (ask again then; an unknown "
            "transaction still unknown a minute after it was sent was dropped: send it again). 200 "
            "{status: mined} once applied; 200 {status: reverted, reason: {error, args}} with the contract's "
            "decoded custom error, also recorded on the booking's status_history (no status change). 400 when "
            "it did not touch the escrow contract, has no event for this booking, or is a reverted call for "
            "another booking; 409 when its block is not the chain's block at that height (reorganised out, or "
            "a node on a fork answered): nothing is applied. 503 with Retry-After when the chain node is "
            "unavailable or the database met a concurrent update: send it again."
        ),
        parameters=[_BOOKING_ID, TX_RETRY_AFTER],
        request=TransactionSubmitSerializer,
        responses={
            200: TransactionSubmissionSerializer,
            202: TransactionSubmissionSerializer,
            **refusals(400, 401, 403, 404, 409, 413, 415, 429, 503),
        },
    )
    @action(detail=True, methods=["post"], url_path="submit-transaction", throttle_classes=[WalletWriteThrottle])
    def submit_transaction(self, request, booking_id=None):
        booking = self.get_object()
        require_role(booking, request.user, {CUSTOMER, PROVIDER}, "report its transactions")
        serializer = TransactionSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = submit_transaction(booking, serializer.validated_data["tx_hash"], actor=actor_label(request.user))
        if result.retry_after_seconds is not None:  # unknown, or pending: the client asks again
            return Response(
                TransactionSubmissionSerializer(result).data, status=status.HTTP_202_ACCEPTED,
                headers={"Retry-After": str(result.retry_after_seconds)},
            )
        return Response(TransactionSubmissionSerializer(result).data, status=status.HTTP_200_OK)


# -- Sign-In with Ethereum ------------------------------------------------------------------
class SignInNonceView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [SignInThrottle]

    @extend_schema(
        summary="Start Sign-In with Ethereum: a single-use nonce for the EIP-4361 message",
        request=None,
        responses={201: SignInNonceSerializer, **refusals(400, 413, 415, 429)},
    )
    def post(self, request):
        _check_empty_body(request)
        body = {
            "nonce": issue_sign_in_nonce(),
            "expires_in": settings.SIWE_NONCE_TTL_SECONDS,
            "domains": settings.SIWE_DOMAIN,
            "chain_id": settings.CHAIN_ID,
        }
        return Response(SignInNonceSerializer(body).data, status=status.HTTP_201_CREATED)


class SignInView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [SignInThrottle]

    @extend_schema(
        summary="Finish Sign-In with Ethereum: verify the signed EIP-4361 message, get a bearer token",
        request=SignInSerializer,
        responses={200: WalletTokenSerializer, **refusals(400, 413, 415, 429, 503)},
    )
    def post(self, request):
        serializer = SignInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = verify_sign_in(serializer.validated_data["message"], serializer.validated_data["signature"])
        issued = issue_wallet_token(message.address, not_after=message.expiration_time)
        body = {
            "token": issued.token, "token_type": "Bearer", "address": issued.address, "expires_at": issued.expires_at
        }
        return Response(WalletTokenSerializer(body).data)


class SignOutView(APIView):
    authentication_classes = [WalletTokenAuthentication]
    permission_classes = [IsWallet]

    @extend_schema(
        summary="Revoke the bearer token used for this request", request=None, responses={204: None, **refusals(401)}
    )
    def post(self, request):
        revoke_wallet_token(request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WalletSessionView(APIView):
    authentication_classes = [WalletTokenAuthentication]
    permission_classes = [IsWallet]

    @extend_schema(summary="The signed-in wallet", responses={200: WalletSessionSerializer, **refusals(401)})
    def get(self, request):
        body = {"address": request.user.address, "token_expires_at": request.auth.expires_at}
        return Response(WalletSessionSerializer(body).data)


# -- referrals ------------------------------------------------------------------------------
@extend_schema_view(
    list=extend_schema(
        summary="The signed-in wallet's invite codes, oldest first",
        responses={200: InviteCodeSerializer(many=True), **refusals(401)},
    ),
    create=extend_schema(
        summary="A new invite code of the signed-in wallet, to hand to the wallets it invites",
        description=(
            "Any number of wallets may redeem one code. A wallet holds at most MAX_INVITE_CODES_PER_WALLET "
            "codes (409 beyond). The escrow and USDC contracts cannot invite (403)."
        ),
        request=None,
        responses={
            201: InviteCodeSerializer,
            **refusals(400, 401, 413, 415, 429),
            403: OpenApiResponse(ErrorSerializer, "The signed-in address is the escrow or USDC contract"),
            409: OpenApiResponse(ErrorSerializer, "The wallet has as many invite codes as allowed"),
        },
    ),
)
class InviteCodeViewSet(mixins.ListModelMixin, GenericViewSet):
    authentication_classes = [WalletTokenAuthentication]
    permission_classes = [IsWallet]
    serializer_class = InviteCodeSerializer
    pagination_class = None  # a handful at most (MAX_INVITE_CODES_PER_WALLET)
    queryset = InviteCode.objects.none()  # for the schema generator; get_queryset decides

    def get_queryset(self):
        return invite_codes_of(self.request.user.address)

    def get_throttles(self):
        if self.action == "create":
            return [WalletWriteThrottle()]
        return super().get_throttles()

    def create(self, request):
        _check_empty_body(request)
        invite = create_invite_code(request.user.address)
        invite.redemptions = 0
        return Response(InviteCodeSerializer(invite).data, status=status.HTTP_201_CREATED)


class RedeemInviteCodeView(APIView):
    authentication_classes = [WalletTokenAuthentication]
    permission_classes = [IsWallet]
    throttle_classes = [WalletWriteThrottle]

    @extend_schema(
        summary="Redeem another wallet's invite code: it becomes the inviter of this wallet's bookings, for good",
        description=(
            "Once per wallet, and only before its first booking (409 otherwise). The inviter of each booking "
            "the wallet then makes is the code's inviter, at the invited rates, except for a booking with that "
            "inviter as its provider, which gets no inviter. A wallet's own code, and a code of the escrow or "
            "USDC contract, are refused (400)."
        ),
        request=RedeemInviteCodeSerializer,
        responses={
            201: ReferralSerializer,
            **refusals(400, 401, 413, 415, 429),
            404: OpenApiResponse(ErrorSerializer, "No invite code with this code"),
            409: OpenApiResponse(ErrorSerializer, "The wallet already redeemed a code, or has already booked"),
        },
    )
    def post(self, request):
        serializer = RedeemInviteCodeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        invite = invite_code_named(serializer.validated_data["code"])
        if invite is None:
            raise NotFound("No invite code with this code; check it with the wallet that shared it.")
        referral = redeem_invite_code(request.user.address, invite)
        return Response(ReferralSerializer(referral).data, status=status.HTTP_201_CREATED)


# -- earnings ---------------------------------------------------------------------------------
_EARNINGS = PolymorphicProxySerializer(
    component_name="Earnings", serializers=[WalletEarningsSerializer, FeeLedgerSerializer],
    resource_type_field_name=None,
)


class EarningsView(APIView):
    authentication_classes = API_AUTHENTICATION
    permission_classes = [IsWalletOrStaff]

    @extend_schema(
        summary="What the signed-in wallet earned as provider and as inviter (staff: the platform fee ledger)",
        description=(
            "A wallet: its totals as provider (completions and its part of cancellations) and as inviter, and "
            "the bookings that paid it, newest settled first, 50 a page (`?page=N`). Staff: the platform fee "
            "ledger's totals and its totals per UTC day, newest first, 50 days a page. Every amount is exact: "
            "`amount` in USDC base units as a decimal string, `amount_decimal` whole USDC with 6 decimals. "
            "The console exports the fee ledger as CSV (Platform fees, Export CSV)."
        ),
        parameters=[OpenApiParameter("page", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False)],
        responses={200: _EARNINGS, **refusals(401, 403), 404: OpenApiResponse(ErrorSerializer, "No such page")},
    )
    def get(self, request):
        paginator = BookingPagination()
        if is_staff_user(request.user):
            days = [day_totals(row) for row in paginator.paginate_queryset(fee_ledger_days(), request, view=self)]
            body = {
                "totals": fee_ledger_totals(),
                "results": [{"day": day, **totals.__dict__} for day, totals in days],
            }
            return Response(FeeLedgerSerializer(self._page(paginator, body)).data)
        address = request.user.address
        earnings = wallet_earnings(address)
        bookings = paginator.paginate_queryset(bookings_with_earnings(address), request, view=self)
        body = {"address": address, "provider": earnings.provider, "inviter": earnings.inviter, "results": bookings}
        return Response(WalletEarningsSerializer(self._page(paginator, body)).data)

    @staticmethod
    def _page(paginator: PageNumberPagination, body: dict) -> dict:
        return {
            **body, "count": paginator.page.paginator.count,
            "next": paginator.get_next_link(), "previous": paginator.get_previous_link(),
        }
