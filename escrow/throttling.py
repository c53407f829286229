"""Rate limits (DRF throttling on the default cache, i.e. Redis shared by all workers)."""
from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from .authentication import is_wallet


class WalletAuthorizationThrottle(SimpleRateThrottle):
    """authorize-payment and request-cancellation: settings.AUTHORIZATION_THROTTLE_RATE per wallet
    (staff sessions by user id). Each call signs something and spends a nonce."""

    scope = "authorization"

    def get_rate(self):
        return settings.AUTHORIZATION_THROTTLE_RATE

    def get_cache_key(self, request, view):
        user = request.user
        if is_wallet(user):
            ident = "wallet:" + user.address.lower()
        elif user is not None and user.is_authenticated:
            ident = f"user:{user.pk}"
        else:
            ident = "ip:" + self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class SignInThrottle(SimpleRateThrottle):
    """The anonymous sign-in endpoints, per client IP: settings.SIWE_THROTTLE_RATE."""

    scope = "sign_in"

    def get_rate(self):
        return settings.SIWE_THROTTLE_RATE

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
