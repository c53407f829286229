"""Request and response shapes of the escrow API. Input serializers check form (types,
formats, unknown fields); the booking rules themselves live in escrow.services."""
from __future__ import annotations

from collections.abc import Mapping

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.audit import MAX_REASON_LENGTH
from common.eth import UINT256_MAX, format_amount

from .addresses import normalize_address
from .errors import InvalidInput
from .models import Booking, BookingStatus, BookingStatusChange, InviteCode, Referral
from .money import AmountError, parse_amount
from .referrals import CODE_PATTERN, normalize_invite_code
from .services import MAX_DESCRIPTION_LENGTH, SUBMISSION_STATUSES, normalize_tx_hash
from .siwe import MAX_MESSAGE_LENGTH, MAX_SIGNATURE_BYTES


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not declare, so a typo ("ammount") is an error, not a silent default.

    `refused_fields` gives a specific reason for fields clients may expect to set but cannot.
    Its schema says `additionalProperties: false` (escrow.schema).
    """

    refused_fields: dict[str, str] = {}

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            writable = {name for name, f in self.fields.items() if not f.read_only}
            unknown = sorted(str(key) for key in data if key not in writable)
            if unknown:
                raise serializers.ValidationError(
                    {key: [self.refused_fields.get(key, "Unknown field.")] for key in unknown}
                )
        return super().to_internal_value(data)


class StringField(serializers.CharField):
    """Text input that must be a JSON string: DRF's CharField also takes a number and makes it
    text, which the schema's `type: string` does not allow. Its schema (escrow.schema) also states
    what CharField refuses: NUL characters, and blank text unless allow_blank."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "type": "string",
        # A custom format: the pattern cannot check an EIP-55 checksum.
        "format": "ethereum-address",
        "pattern": "^0x(?!0{40}$)[0-9a-fA-F]{40}$",
        "description": "0x address: EIP-55 checksummed, or all lower (or upper) case; not the zero address. "
        "Answers give it checksummed.",
        "example": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    }
)
class AddressField(serializers.Field):
    """0x address, checksummed or all one case; returned in EIP-55 form (None for none)."""

    default_error_messages = {"type": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("type")
        try:
            return normalize_address(data, field=self.field_name)
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.reason) from None

    def to_representation(self, value):
        return value or None


@extend_schema_field(
    {
        "oneOf": [
            {
                "type": "string",
                # Surrounding white space is ignored; at least one digit is not 0 (escrow.money.parse_amount).
                # Up to 71 whole digits: 10^71 USDC in base units still fits a uint256.
                "pattern": r"^\s*(?=[0-9.]*[1-9])([0-9]{1,71}(\.[0-9]{0,6})?|\.[0-9]{1,6})\s*$",
                "description": "whole USDC, plain digits with at most 6 decimals, e.g. \"100.50\"",
            },
            {"type": "integer", "minimum": 1, "maximum": UINT256_MAX, "description": "USDC base units (6 decimals)"},
        ]
    }
)
class AmountField(serializers.Field):
    """A decimal string of whole USDC ("100.50") or an integer of base units (escrow.money.parse_amount)."""

    def to_internal_value(self, data):
        try:
            return parse_amount(data)
        except AmountError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value):
        return str(value)


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date-time that states its UTC offset (a time without one is ambiguous)."""

    default_error_messages = {"naive": "Must include a time zone offset, e.g. 2030-01-01T10:00:00Z."}

    def to_internal_value(self, value):
        if isinstance(value, str):
            try:
                parsed = parse_datetime(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is None:
                self.fail("naive")
        return super().to_internal_value(value)


@extend_schema_field({"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"})
class TxHashField(StringField):
    """A transaction hash: 0x and 64 hex digits, in either case; normalised to lower case."""

    def to_internal_value(self, data):
        try:
            return normalize_tx_hash(super().to_internal_value(data))
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.reason) from None


# -- bookings -------------------------------------------------------------------------------
class BookingCreateSerializer(StrictSerializer):
    """A new booking; the signed-in wallet is its customer."""

    refused_fields = {
        "customer": "The customer is the signed-in wallet; it cannot be chosen.",
        "platform_fee_rate": "Fee rates are set by the platform and cannot be chosen.",
        "inviter_fee_rate": "Fee rates are set by the platform and cannot be chosen.",
        "inviter": "The inviter cannot be named: it is whoever's invite code this wallet redeemed "
        "(POST /api/referrals/redeem/, before its first booking).",
    }

    provider = AddressField(help_text="not the customer (the signed-in wallet), nor the escrow or USDC contract")
    amount = AmountField()
    scheduled_at = AwareDateTimeField(
        help_text="in the future, at most BOOKING_MAX_DAYS_AHEAD (366) days ahead, with a UTC offset"
    )
    description = StringField(max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True, default="")


_STATUS_OR_BLANK = {"choices": BookingStatus.choices, "allow_blank": True, "read_only": True}


class StatusChangeSerializer(serializers.ModelSerializer):
    from_status = serializers.ChoiceField(**_STATUS_OR_BLANK, help_text="blank for the booking's creation")

    class Meta:
        model = BookingStatusChange
        fields = ["from_status", "to_status", "source", "tx_hash", "note", "created_at"]
        read_only_fields = fields


class BookingSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    customer = AddressField(source="customer_address", read_only=True)
    provider = AddressField(source="provider_address", read_only=True)
    inviter = AddressField(source="inviter_address", read_only=True, allow_null=True, help_text="null when none")
    amount = serializers.SerializerMethodField(help_text="USDC base units, as a decimal string")
    amount_decimal = serializers.SerializerMethodField(help_text="whole USDC with 6 decimals, e.g. \"100.500000\"")
    status_before_cancellation = serializers.ChoiceField(
        **_STATUS_OR_BLANK, help_text="where a PENDING_CANCELLATION booking returns if its authorization lapses; "
        "blank otherwise",
    )
    status_history = StatusChangeSerializer(source="status_changes", many=True, read_only=True)

    class Meta:
        model = Booking
        fields = [
            "id",
            "chain_booking_id",
            "customer",
            "provider",
            "inviter",
            "amount",
            "amount_decimal",
            "platform_fee_rate",
            "inviter_fee_rate",
            "scheduled_at",
            "description",
            "status",
            "status_before_cancellation",
            "cancellation_reason",
            "payment_tx_hash",
            "completion_tx_hash",
            "cancellation_tx_hash",
            "chain_confirmed_at",
            "status_changed_at",
            "created_at",
            "updated_at",
            "status_history",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "pattern": "^[0-9]+$"})
    def get_amount(self, booking) -> str:
        return str(int(booking.amount))

    @extend_schema_field({"type": "string", "pattern": "^[0-9]+\\.[0-9]{6}$"})
    def get_amount_decimal(self, booking) -> str:
        return format_amount(int(booking.amount))


# -- referrals ------------------------------------------------------------------------------
@extend_schema_field({"type": "string", "pattern": CODE_PATTERN, "example": "K7M2QX9HPA"})
class InviteCodeField(StringField):
    """An invite code: 10 letters and digits (no 0, O, 1 or I), in either case."""

    def to_internal_value(self, data):
        try:
            return normalize_invite_code(super().to_internal_value(data))
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.reason) from None


class InviteCodeSerializer(serializers.ModelSerializer):
    redemptions = serializers.IntegerField(read_only=True, help_text="wallets bound to the inviter by this code")

    class Meta:
        model = InviteCode
        fields = ["code", "created_at", "redemptions"]
        read_only_fields = fields


class RedeemInviteCodeSerializer(StrictSerializer):
    """An invite code of another wallet; redeemed once per wallet, before its first booking."""

    code = InviteCodeField(trim_whitespace=False)


class ReferralSerializer(serializers.ModelSerializer):
    code = serializers.CharField(source="invite_code.code", read_only=True)
    inviter = AddressField(source="invite_code.inviter_address", read_only=True)

    class Meta:
        model = Referral
        fields = ["code", "inviter", "redeemed_at"]
        read_only_fields = fields


# -- authorizations -------------------------------------------------------------------------
class Eip712DomainSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    chainId = serializers.IntegerField()
    verifyingContract = serializers.CharField()


class BookingAuthorizationMessageSerializer(serializers.Serializer):
    bookingId = serializers.CharField(help_text="bytes32, 0x hex")
    customer = serializers.CharField()
    provider = serializers.CharField()
    inviter = serializers.CharField(help_text="the zero address when there is no inviter")
    amount = serializers.CharField(help_text="uint256 as a decimal string")
    platformFeeRate = serializers.CharField()
    inviterFeeRate = serializers.CharField()
    expiry = serializers.CharField(help_text="unix seconds")
    nonce = serializers.CharField()


class CancellationAuthorizationMessageSerializer(serializers.Serializer):
    bookingId = serializers.CharField(help_text="bytes32, 0x hex")
    customerAmount = serializers.CharField()
    providerAmount = serializers.CharField()
    platformAmount = serializers.CharField()
    inviterAmount = serializers.CharField()
    reason = serializers.CharField()
    expiry = serializers.CharField(help_text="unix seconds")
    nonce = serializers.CharField()


class EthersTypedDataSerializer(serializers.Serializer):
    """The same typed data as ethers v6 takes it: `verifyTypedData(domain, types, value, signature)`,
    `signer.signTypedData(domain, types, value)`. `types` holds the struct alone (ethers refuses an
    EIP712Domain entry as an ambiguous primary type); `value` is `message`."""

    domain = Eip712DomainSerializer()
    types = serializers.DictField(
        child=serializers.ListField(child=serializers.DictField(child=serializers.CharField())),
        help_text="the primary type's fields only, no EIP712Domain",
    )
    primaryType = serializers.CharField()
    value = serializers.DictField(child=serializers.CharField(), help_text="the signed message, as `message`")


class PaymentEthersTypedDataSerializer(EthersTypedDataSerializer):
    value = BookingAuthorizationMessageSerializer(help_text="the signed message, as `message`")


class CancellationEthersTypedDataSerializer(EthersTypedDataSerializer):
    value = CancellationAuthorizationMessageSerializer(help_text="the signed message, as `message`")


class SignedAuthorizationSerializer(serializers.Serializer):
    """Everything a wallet needs to call the contract (message fields + signature) or to verify it
    (types, domain). The top level is the eth_signTypedData_v4 document (MetaMask, viem, eth_account:
    `types` includes EIP712Domain); `ethers` is the same typed data in the shape ethers v6 takes."""

    booking = serializers.UUIDField(source="record.booking.uuid")
    primaryType = serializers.CharField(source="primary_type")
    domain = Eip712DomainSerializer()
    types = serializers.DictField(
        child=serializers.ListField(child=serializers.DictField(child=serializers.CharField()))
    )
    signature = serializers.CharField(help_text="65 bytes r‖s‖v, 0x hex")
    digest = serializers.CharField(help_text="the EIP-712 digest that was signed")
    nonce = serializers.CharField()
    expiry = serializers.CharField(help_text="unix seconds")
    expires_at = serializers.DateTimeField()


class PaymentAuthorizationSerializer(SignedAuthorizationSerializer):
    message = BookingAuthorizationMessageSerializer()
    ethers = PaymentEthersTypedDataSerializer()


_DATE_TIME = serializers.DateTimeField()  # how SignedAuthorizationSerializer renders expires_at


def payment_authorization_body(signed) -> dict:
    """`PaymentAuthorizationSerializer(signed).data`, built directly: authorize-payment is the hot
    path and the nested serializers cost more CPU than signing. PaymentAuthorizationSerializer
    stays the documented shape (OpenAPI); tests/escrow/test_authorize_fast_path.py checks both agree."""
    signed_domain = signed.domain
    domain = {
        "name": signed_domain["name"],
        "version": signed_domain["version"],
        "chainId": int(signed_domain["chainId"]),
        "verifyingContract": signed_domain["verifyingContract"],
    }
    types = {name: [dict(member) for member in members] for name, members in signed.types.items()}
    message = {name: str(value) for name, value in signed.message.items()}
    return {
        "booking": str(signed.record.booking.uuid),
        "primaryType": signed.primary_type,
        "domain": domain,
        "types": types,
        "signature": signed.signature,
        "digest": signed.digest,
        "nonce": str(signed.nonce),
        "expiry": str(signed.expiry),
        "expires_at": _DATE_TIME.to_representation(signed.expires_at),
        "message": message,
        "ethers": {  # SignedAuthorization.ethers
            "domain": dict(domain),
            "types": {signed.primary_type: types[signed.primary_type]},
            "primaryType": signed.primary_type,
            "value": dict(message),
        },
    }


class CancellationSplitSerializer(serializers.Serializer):
    customer = serializers.CharField()
    provider = serializers.CharField()
    platform = serializers.CharField()
    inviter = serializers.CharField()


class CancellationAuthorizationSerializer(SignedAuthorizationSerializer):
    message = CancellationAuthorizationMessageSerializer()
    ethers = CancellationEthersTypedDataSerializer()
    booking_status = serializers.ChoiceField(choices=BookingStatus.choices)
    policy_tier = serializers.CharField(help_text="provider_cancelled | full_refund | partial_refund | late")
    refund_bps = serializers.IntegerField(help_text="share of the amount refunded to the customer, basis points")
    split = CancellationSplitSerializer(help_text="base units as decimal strings; sums to the booking amount")


class CancellationRequestSerializer(StrictSerializer):
    """Why the booking is cancelled (kept on the booking and in the signed authorization)."""

    reason = StringField(max_length=MAX_REASON_LENGTH)


class TransactionSubmitSerializer(StrictSerializer):
    """The hash of a transaction the wallet sent for this booking."""

    tx_hash = TxHashField(trim_whitespace=False)


class RevertReasonSerializer(serializers.Serializer):
    """Why a transaction reverted: the contract's custom error, decoded from its ABI."""

    error = serializers.CharField(
        allow_null=True,
        help_text="the contract's custom error (e.g. NonceAlreadyUsed, AuthorizationExpired), Error or Panic; "
        "null when the revert data is not one the ABI knows, or replaying the call did not revert",
    )
    args = serializers.DictField(help_text="its arguments by name: integers as decimal strings, addresses checksummed")
    data = serializers.CharField(allow_blank=True, help_text="the raw revert data (0x hex)")
    function = serializers.CharField(allow_null=True, help_text="the escrow function the transaction called")


class TransactionSubmissionSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=SUBMISSION_STATUSES,
        help_text="unknown: the chain node has never seen it; pending: in the node's mempool, or mined below the "
        "confirmation depth; reverted: mined, and reverted (see reason); mined: applied",
    )
    tx_hash = serializers.CharField()
    block_number = serializers.IntegerField(allow_null=True)
    events = serializers.ListField(child=serializers.CharField())
    booking_status = serializers.ChoiceField(
        choices=BookingStatus.choices,
        allow_null=True,
        help_text="the booking's status once the transaction's escrow events were applied",
    )
    reason = RevertReasonSerializer(allow_null=True, help_text="reverted: why (null otherwise)")
    retry_after_seconds = serializers.IntegerField(
        allow_null=True, help_text="unknown/pending: ask again after this many seconds (also the Retry-After header)"
    )
    hint = serializers.CharField(allow_blank=True, help_text="unknown/pending: what to do meanwhile")


# -- sign-in --------------------------------------------------------------------------------
class SignInNonceSerializer(serializers.Serializer):
    nonce = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="seconds")
    domains = serializers.ListField(child=serializers.CharField(), help_text="accepted EIP-4361 domains")
    chain_id = serializers.IntegerField()


class SignInSerializer(StrictSerializer):
    """An EIP-4361 message naming a nonce from /api/auth/nonce/, and the wallet's signature of it."""

    message = StringField(max_length=MAX_MESSAGE_LENGTH, trim_whitespace=False, help_text="EIP-4361 text")
    signature = StringField(
        max_length=2 + 2 * MAX_SIGNATURE_BYTES,
        help_text="personal_sign signature (65 bytes) or an EIP-1271 contract wallet's signature, 0x hex",
    )


class WalletTokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    token_type = serializers.CharField()
    address = AddressField()
    expires_at = serializers.DateTimeField()


class WalletSessionSerializer(serializers.Serializer):
    address = AddressField()
    token_expires_at = serializers.DateTimeField()


# -- refusals (rendered by DRF and escrow.exceptions; these document their shapes) ---------------
class ErrorSerializer(serializers.Serializer):
    """Every refusal but bad input: what went wrong, in a sentence."""

    detail = serializers.CharField()


class ConflictSerializer(ErrorSerializer):
    """The booking's status does not allow the request."""

    status = serializers.ChoiceField(choices=BookingStatus.choices, required=False, help_text="the booking's status")
    requested_status = serializers.ChoiceField(
        choices=BookingStatus.choices, required=False, help_text="the status the request would have moved it to"
    )


class FieldErrorsSerializer(serializers.Serializer):
    """Bad input: {field: [reason, ...]}; `non_field_errors` when the body as a whole is wrong.
    Its schema (a map of lists) is written out in escrow.schema."""


# -- earnings ---------------------------------------------------------------------------------
class UsdcAmountSerializer(serializers.Serializer):
    """An exact amount given as an int: base units as a decimal string, and whole USDC."""

    amount = serializers.CharField(help_text="USDC base units (6 decimals) as a decimal string, exact")
    amount_decimal = serializers.CharField(help_text='whole USDC with exactly 6 decimals, e.g. "100.500000"')

    def to_representation(self, instance):
        return {"amount": str(int(instance)), "amount_decimal": format_amount(int(instance))}


class ProviderTotalsSerializer(serializers.Serializer):
    total = UsdcAmountSerializer(help_text="from completions and cancellations")
    from_completions = UsdcAmountSerializer()
    from_cancellations = UsdcAmountSerializer(help_text="the provider's part of cancellation splits")
    bookings = serializers.IntegerField(help_text="bookings that paid the wallet as provider")
    services_completed = serializers.IntegerField()


class InviterTotalsSerializer(serializers.Serializer):
    total = UsdcAmountSerializer()
    bookings = serializers.IntegerField(help_text="bookings that paid the wallet as inviter")


class BookingEarningSerializer(serializers.ModelSerializer):
    """One booking that paid the wallet: its part as provider and as inviter (null in a role it
    does not have there)."""

    booking = serializers.UUIDField(source="uuid")
    settled_by = serializers.SerializerMethodField(help_text="the event that paid out: completion or cancellation")
    tx_hash = serializers.SerializerMethodField(help_text="the transaction that paid out")
    as_provider = serializers.SerializerMethodField()
    as_inviter = serializers.SerializerMethodField()

    class Meta:
        model = Booking
        fields = ["booking", "status", "settled_by", "tx_hash", "status_changed_at", "as_provider", "as_inviter"]
        read_only_fields = fields

    def get_settled_by(self, booking) -> str:
        return "completion" if booking.chain_data.get("completion") else "cancellation"

    def get_tx_hash(self, booking) -> str:
        return booking.completion_tx_hash or booking.cancellation_tx_hash

    @extend_schema_field(UsdcAmountSerializer(allow_null=True))
    def get_as_provider(self, booking):
        return UsdcAmountSerializer(booking.as_provider).data if booking.as_provider else None

    @extend_schema_field(UsdcAmountSerializer(allow_null=True))
    def get_as_inviter(self, booking):
        return UsdcAmountSerializer(booking.as_inviter).data if booking.as_inviter else None


class WalletEarningsSerializer(serializers.Serializer):
    address = serializers.CharField()
    provider = ProviderTotalsSerializer()
    inviter = InviterTotalsSerializer()
    count = serializers.IntegerField(help_text="bookings in `results`, over all pages")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = BookingEarningSerializer(many=True)


class LedgerTotalsSerializer(serializers.Serializer):
    platform = UsdcAmountSerializer()
    inviter = UsdcAmountSerializer(help_text="paid to inviters")
    provider = UsdcAmountSerializer(help_text="paid to providers with those fees")
    bookings = serializers.IntegerField()


class LedgerDaySerializer(LedgerTotalsSerializer):
    day = serializers.DateField(help_text="UTC day the fee rows were recorded")


class FeeLedgerSerializer(serializers.Serializer):
    totals = LedgerTotalsSerializer()
    count = serializers.IntegerField(help_text="days in `results`, over all pages")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = LedgerDaySerializer(many=True)
