"""DRF authentication for wallets signed in with SIWE: `Authorization: Bearer <token>`."""
from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from .wallet_tokens import resolve_wallet_token


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


class WalletTokenAuthentication(BaseAuthentication):
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
        record = resolve_wallet_token(token)
        if record is None:
            raise AuthenticationFailed("The bearer token is invalid, expired or revoked; sign in again.")
        return WalletPrincipal(address=record.address, token_id=record.pk), record

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) to anonymous requests, with a WWW-Authenticate challenge.
        return 'Bearer realm="api"'


class WalletTokenScheme(OpenApiAuthenticationExtension):
    target_class = WalletTokenAuthentication
    name = "walletToken"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer")
