"""Escrow API routes, mounted at /api/ by bookme/urls.py; each answers with and without its
trailing slash (common.routes)."""
from common.routes import OptionalSlashRouter, optional_slash_path

from . import api

router = OptionalSlashRouter()
router.register("bookings", api.BookingViewSet, basename="booking")
router.register("referrals/invite-codes", api.InviteCodeViewSet, basename="invite-code")

urlpatterns = [
    optional_slash_path("auth/nonce", api.SignInNonceView.as_view(), name="siwe-nonce"),
    optional_slash_path("auth/verify", api.SignInView.as_view(), name="siwe-verify"),
    optional_slash_path("auth/logout", api.SignOutView.as_view(), name="siwe-logout"),
    optional_slash_path("auth/me", api.WalletSessionView.as_view(), name="wallet-session"),
    optional_slash_path("referrals/redeem", api.RedeemInviteCodeView.as_view(), name="redeem-invite-code"),
    optional_slash_path("earnings", api.EarningsView.as_view(), name="earnings"),
    *router.urls,
]
