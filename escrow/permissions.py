"""Who may use the booking API at all; per-booking roles are decided in escrow.services."""
from rest_framework.permissions import BasePermission

from .authentication import is_staff_user, is_wallet


class IsWalletOrStaff(BasePermission):
    message = "Only a signed-in wallet or staff can use this endpoint."

    def has_permission(self, request, view) -> bool:
        return is_wallet(request.user) or is_staff_user(request.user)


class IsWallet(BasePermission):
    message = "Only a signed-in wallet can use this endpoint."

    def has_permission(self, request, view) -> bool:
        return is_wallet(request.user)
