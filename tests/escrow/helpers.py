"""Helpers shared by the escrow tests (fixtures are in conftest.py)."""
from __future__ import annotations

from datetime import UTC, timedelta

from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from rest_framework.test import APIClient

from escrow.referrals import create_invite_code, redeem_invite_code
from escrow.wallet_tokens import issue_wallet_token


def wallet(label: str):
    """A deterministic test wallet (eth_account LocalAccount) derived from a label."""
    return Account.from_key(keccak(text=f"bookme-test-wallet:{label}"))


def wallet_client(account) -> APIClient:
    """An API client signed in as `account` (token issued directly; tests/escrow/test_siwe.py covers the sign-in)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_wallet_token(account.address).token}")
    return client


def bind_to_inviter(invitee: str, inviter: str) -> None:
    """`invitee` redeems a new invite code of `inviter` (escrow.referrals): its later bookings carry that inviter."""
    redeem_invite_code(invitee, create_invite_code(inviter))


def future_iso(**delta) -> str:
    return (timezone.now() + timedelta(**(delta or {"days": 2}))).isoformat()


def past_iso(**delta) -> str:
    return (timezone.now() - timedelta(**(delta or {"hours": 1}))).isoformat()


# -- Sign-In with Ethereum -------------------------------------------------------------------
SIWE_TEST_DOMAIN = "localhost:8000"  # settings.SIWE_DOMAIN default


def siwe_message(
    address: str,
    nonce: str,
    *,
    domain: str = SIWE_TEST_DOMAIN,
    uri: str | None = None,
    chain_id: int = 31337,
    issued_at=None,
    expiration_time=None,
    statement: str | None = "Sign in to BookMe.",
) -> str:
    """An EIP-4361 message as a wallet would show it (terms in the spec's order, no trailing newline)."""
    issued_at = issued_at or timezone.now()
    lines = [f"{domain} wants you to sign in with your Ethereum account:", address, ""]
    if statement is not None:
        lines += [statement, ""]
    lines += [
        f"URI: {uri or 'http://' + domain + '/'}",
        "Version: 1",
        f"Chain ID: {chain_id}",
        f"Nonce: {nonce}",
        f"Issued At: {_rfc3339(issued_at)}",
    ]
    if expiration_time is not None:
        lines.append(f"Expiration Time: {_rfc3339(expiration_time)}")
    return "\n".join(lines)


def _rfc3339(moment) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def personal_sign(account, text: str) -> str:
    """EIP-191 personal_sign of `text` by `account`, as 0x hex (what a wallet returns)."""
    return "0x" + account.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")


def sign_in(account, *, client: APIClient | None = None, chain_id: int = 31337) -> APIClient:
    """Sign in through the API (nonce → signed EIP-4361 message → bearer token); returns the client, authenticated."""
    client = client or APIClient()
    nonce_response = client.post("/api/auth/nonce/", format="json")
    assert nonce_response.status_code == 201, nonce_response.content
    message = siwe_message(account.address, nonce_response.json()["nonce"], chain_id=chain_id)
    response = client.post(
        "/api/auth/verify/", {"message": message, "signature": personal_sign(account, message)}, format="json",
    )
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    return client
