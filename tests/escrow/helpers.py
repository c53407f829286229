"""Helpers shared by the escrow tests (fixtures are in conftest.py)."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from eth_account import Account
from eth_utils import keccak
from rest_framework.test import APIClient

from escrow.wallet_tokens import issue_wallet_token


def wallet(label: str):
    """A deterministic test wallet (eth_account LocalAccount) derived from a label."""
    return Account.from_key(keccak(text=f"bookme-test-wallet:{label}"))


def wallet_client(account) -> APIClient:
    """An API client signed in as `account` (token issued directly; tests/escrow/test_siwe.py covers the sign-in)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_wallet_token(account.address).token}")
    return client


def future_iso(**delta) -> str:
    return (timezone.now() + timedelta(**(delta or {"days": 2}))).isoformat()


def past_iso(**delta) -> str:
    return (timezone.now() - timedelta(**(delta or {"hours": 1}))).isoformat()
