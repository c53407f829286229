"""Escrow test fixtures: wallets with bearer tokens, API clients per role, booking factory."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from escrow.services import create_booking

from .helpers import bind_to_inviter, wallet, wallet_client


@pytest.fixture
def customer():
    return wallet("customer")


@pytest.fixture
def provider():
    return wallet("provider")


@pytest.fixture
def inviter():
    return wallet("inviter")


@pytest.fixture
def stranger():
    return wallet("stranger")


@pytest.fixture
def make_booking():
    """create_booking with sensible defaults (a booking two days ahead, 100.50 USDC). With
    `inviter`, the customer first redeems an invite code of the inviter (its first booking)."""

    def make(customer, provider, *, inviter=None, **overrides):
        if inviter is not None:
            bind_to_inviter(getattr(customer, "address", customer), getattr(inviter, "address", inviter))
        fields = {
            "customer": getattr(customer, "address", customer),
            "provider": getattr(provider, "address", provider),
            "amount": "100.50",
            "scheduled_at": timezone.now() + timedelta(days=2),
            "description": "haircut",
        }
        fields.update(overrides)
        return create_booking(**fields)

    return make


@pytest.fixture
def clients(db, customer, provider, stranger, django_user_model):
    """An API client per role: customer, provider, stranger (wallets), staff, plain user (sessions), anonymous."""
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    plain = django_user_model.objects.create_user("plain", password="x")
    staff_client, plain_client = APIClient(), APIClient()
    staff_client.force_login(staff)
    plain_client.force_login(plain)
    return {
        "customer": wallet_client(customer),
        "provider": wallet_client(provider),
        "stranger": wallet_client(stranger),
        "staff": staff_client,
        "plain_user": plain_client,
        "anonymous": APIClient(),
    }
