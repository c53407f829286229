"""Escrow API routes, mounted at /api/ by bookme/urls.py."""
from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("bookings", api.BookingViewSet, basename="booking")
router.register("referrals/invite-codes", api.InviteCodeViewSet, basename="invite-code")

urlpatterns = [
    path("auth/nonce/", api.SignInNonceView.as_view(), name="siwe-nonce"),
    path("auth/verify/", api.SignInView.as_view(), name="siwe-verify"),
    path("auth/logout/", api.SignOutView.as_view(), name="siwe-logout"),
    path("auth/me/", api.WalletSessionView.as_view(), name="wallet-session"),
    path("referrals/redeem/", api.RedeemInviteCodeView.as_view(), name="redeem-invite-code"),
    *router.urls,
]
