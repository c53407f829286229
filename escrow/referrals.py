"""Referrals, decided on the server: who invited a wallet is never read from a request.

An inviter (a signed-in wallet) obtains invite codes (at most MAX_INVITE_CODES_PER_WALLET).
A wallet redeems one code, once, before its first booking, and is then bound to that code's
inviter for good (Referral). Every booking the wallet makes as customer carries that inviter,
at the invited rates (settings DEFAULT_INVITED_PLATFORM_FEE_RATE + DEFAULT_INVITER_FEE_RATE),
except a booking whose provider is the inviter: it gets no inviter (the provider would take the
inviter's share on top of its own), and the platform keeps its full rate.

An inviter is never the customer (a wallet cannot redeem its own code), the provider (above),
or one of our contracts (escrow, USDC: a share paid there can never leave): refused when the
code is created, when it is redeemed, and skipped at booking time if the settings changed since.
"""
from __future__ import annotations

import re
import secrets

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet

from common.eth import same_address

from . import wallet_locks
from .addresses import contract_of_ours
from .errors import BookingConflict, InvalidInput, NotPermitted
from .models import Booking, InviteCode, Referral

# 32 letters and digits that cannot be misread for one another (no 0/O, 1/I); 10 of them are
# 50 bits, far beyond guessing at the redeem endpoint's throttle.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
# What the redeem endpoint accepts: the alphabet in either case (codes are stored upper case).
_CODE = re.compile(f"[A-HJ-NP-Za-hj-np-z2-9]{{{CODE_LENGTH}}}")
CODE_PATTERN = f"^{_CODE.pattern}$"  # the same, as the OpenAPI schema states it


def normalize_invite_code(code) -> str:
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise InvalidInput("code", f"must be {CODE_LENGTH} letters and digits of an invite code")
    return code.upper()


def invite_codes_of(inviter: str) -> QuerySet[InviteCode]:
    """The inviter's codes, oldest first, each with `redemptions` (how many wallets it bound)."""
    return InviteCode.objects.filter(inviter_address=inviter).annotate(redemptions=Count("referrals"))


def invite_code_named(code: str) -> InviteCode | None:
    """The invite code `code` (as normalize_invite_code gives it), or None."""
    return InviteCode.objects.filter(code=code).first()


def create_invite_code(inviter: str) -> InviteCode:
    """A new code for `inviter` (a checksummed wallet address). NotPermitted for our contracts;
    BookingConflict once the wallet has MAX_INVITE_CODES_PER_WALLET codes."""
    contract = contract_of_ours(inviter)
    if contract is not None:
        raise NotPermitted(f"This address is {contract}; a contract of ours cannot invite (its share would be stuck).")
    cap = settings.MAX_INVITE_CODES_PER_WALLET
    with transaction.atomic():
        wallet_locks.lock_until_commit(wallet_locks.as_customer(inviter))
        if InviteCode.objects.filter(inviter_address=inviter).count() >= cap:
            raise BookingConflict(
                f"This wallet already has {cap} invite codes, the most a wallet may have; share one of those."
            )
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            try:
                with transaction.atomic():  # a savepoint: a (50-bit) collision draws again
                    return InviteCode.objects.create(code=code, inviter_address=inviter)
            except IntegrityError:
                continue


def redeem_invite_code(invitee: str, invite: InviteCode) -> Referral:
    """Bind `invitee` (a checksummed wallet address) to the inviter of `invite`, for good.

    InvalidInput("code") for the wallet's own code or a code of one of our contracts;
    BookingConflict when the wallet already redeemed a code or has already booked."""
    if same_address(invite.inviter_address, invitee):
        raise InvalidInput("code", "is your own invite code: a wallet cannot invite itself")
    contract = contract_of_ours(invite.inviter_address)
    if contract is not None:
        raise InvalidInput("code", f"belongs to {contract}, which cannot be an inviter")
    with transaction.atomic():
        # Booking takes the same lock: no booking slips in between the check and the binding.
        wallet_locks.lock_until_commit(wallet_locks.as_customer(invitee))
        existing = Referral.objects.filter(invitee_address=invitee).select_related("invite_code").first()
        if existing is not None:
            raise BookingConflict(
                f"This wallet already redeemed invite code {existing.invite_code.code}; "
                "a wallet is bound to one inviter for good."
            )
        if Booking.objects.filter(customer_address=invitee).exists():
            raise BookingConflict(
                "This wallet has already booked: an invite code can only be redeemed before the wallet's first booking."
            )
        return Referral.objects.create(invitee_address=invitee, invite_code=invite)


def inviter_for_booking(customer: str, provider: str) -> str:
    """The inviter a new booking of `customer` with `provider` carries: the inviter `customer` is
    bound to, or "" when it has none, when that inviter is the provider, or when it has become
    one of our contracts since. The caller holds the customer's wallet lock."""
    inviter = (
        Referral.objects.filter(invitee_address=customer).values_list("invite_code__inviter_address", flat=True).first()
    )
    if not inviter or same_address(inviter, provider) or contract_of_ours(inviter) is not None:
        return ""
    return inviter
