"""DRF authentication for wallets signed in with SIWE: `Authorization: Bearer <token>`."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from .wallet_tokens import resolve_wallet_token, resolve_wallet_token_with_booking


@dataclass(frozen=True)
class WalletPrincipal:
    """`request.user` for a signed-in wallet. Not a Django user: wallets have no password,
    no staff rights and no row in auth_user; the address is the identity."""

    address: str
    token_id: int

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    @property
    def pk(self) -> str:  # DRF's throttles and logs identify users by pk
        return self.address

    def __str__(self) -> str:
        return self.address


def is_wallet(user) -> bool:
    return isinstance(user, WalletPrincipal)


def is_staff_user(user) -> bool:
    return user is not None and not is_wallet(user) and bool(getattr(user, "is_staff", False)) and user.is_active


# Where WalletTokenAuthentication leaves a booking it loaded with the token: (uuid, booking or None).
_LOADED_BOOKING = "_booking_loaded_with_wallet_token"
NOT_LOADED = object()


class WalletTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>` of a wallet signed in with SIWE.

    On a view with `load_booking_with_wallet_token = True`, on a booking's own URL (the view's
    lookup_url_kwarg), the same database query also loads that booking if the wallet is its customer
    or provider, so a booking action costs one round trip instead of two; the view takes it with
    `booking_loaded_with_token`.
    """

    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None  # not ours: let the next authenticator (session) try
        if len(parts) != 2:
            raise AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("The bearer token is malformed.") from None
        booking_uuid = _booking_uuid_to_load(request)
        if booking_uuid is None:
            record = resolve_wallet_token(token)
        else:
            record, booking = resolve_wallet_token_with_booking(token, booking_uuid)
            setattr(request, _LOADED_BOOKING, (booking_uuid, booking))
        if record is None:
            raise AuthenticationFailed("The bearer token is invalid, expired or revoked; sign in again.")
        return WalletPrincipal(address=record.address, token_id=record.pk), record

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) to anonymous requests, with a WWW-Authenticate challenge.
        return 'Bearer realm="api"'


def _booking_uuid_to_load(request) -> uuid.UUID | None:
    context = getattr(request, "parser_context", None) or {}
    view = context.get("view")
    if not getattr(view, "load_booking_with_wallet_token", False):
        return None
    raw_id = context.get("kwargs", {}).get(view.lookup_url_kwarg)
    try:
        return uuid.UUID(raw_id) if isinstance(raw_id, str) else None
    except ValueError:
        return None  # the view answers 404 for a malformed id


def booking_loaded_with_token(request, booking_uuid: uuid.UUID):
    """The booking WalletTokenAuthentication loaded for `booking_uuid` (None: none visible to the
    wallet), or NOT_LOADED when it loaded nothing for this request (a session user, another id)."""
    loaded = getattr(request, _LOADED_BOOKING, None)
    if loaded is None or loaded[0] != booking_uuid:
        return NOT_LOADED
    return loaded[1]
