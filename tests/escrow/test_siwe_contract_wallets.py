"""Sign-In with Ethereum from a smart-contract wallet (EIP-1271), and that wallet paying a booking.

Many Base users sign with smart wallets: the message's address is a contract, and no private
key recovers to it. The API then asks the contract (`isValidSignature` of the message's EIP-191
hash, magic value 0x1626ba7e), on a real anvil with MockERC1271Wallet (owned by an EOA, valid
when the owner signed the hash). An externally owned account's right signature needs no RPC
call; the contract is asked only for an address with code.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from contracts.artifacts import load_artifact
from contracts.deploy import deploy_contract, mint_usdc
from escrow.models import Booking, WalletToken
from tests.chain_harness import booking_auth_tuple
from tests.rpc_proxy import RpcProxy

from .helpers import personal_sign, siwe_message, wallet

pytestmark = [pytest.mark.django_db, pytest.mark.chain]

WALLET_FUNDS = 1_000 * 10**6


class SmartWallet:
    """A deployed MockERC1271Wallet and its owner (an unlocked anvil account with ETH for gas)."""

    def __init__(self, chain, owner):
        self.chain, self.owner = chain, owner
        self.address = deploy_contract(chain.w3, "MockERC1271Wallet", [owner.address], chain.accounts.deployer.key)
        self.contract = chain.w3.eth.contract(address=self.address, abi=load_artifact("MockERC1271Wallet")["abi"])

    def sign(self, text: str) -> str:
        """What the wallet app returns for personal_sign: its owner's signature of the EIP-191 hash."""
        return personal_sign(self.owner, text)

    def execute(self, contract_function) -> dict:
        """The owner has the wallet call `contract_function` (the wallet is msg.sender there)."""
        call = contract_function.build_transaction({"from": self.address, "gas": 1_000_000})
        return self.chain.transact(self.contract.functions.execute(call["to"], call["data"]), self.owner.address)


@pytest.fixture
def smart_wallet(chain_settings):
    return SmartWallet(chain_settings, chain_settings.accounts.customers[3])


def _nonce(client: APIClient) -> str:
    response = client.post("/api/auth/nonce/", format="json")
    assert response.status_code == 201, response.content
    return response.json()["nonce"]


def _verify(client: APIClient, message: str, signature: str):
    return client.post("/api/auth/verify/", {"message": message, "signature": signature}, format="json")


def _sign_in(client: APIClient, smart_wallet: SmartWallet) -> APIClient:
    message = siwe_message(smart_wallet.address, _nonce(client))
    response = _verify(client, message, smart_wallet.sign(message))
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    return client


def test_a_smart_wallet_signs_in_with_its_owners_signature(smart_wallet, settings):
    with RpcProxy(settings.CHAIN_RPC_URLS[0]) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        client = _sign_in(APIClient(), smart_wallet)
        assert proxy.seen == ["eth_getCode", "eth_call"]  # one code check, one isValidSignature
    assert client.get("/api/auth/me/").json()["address"] == smart_wallet.address
    assert WalletToken.objects.get().address == smart_wallet.address  # the wallet, not its owner


def test_a_signature_the_wallet_does_not_accept_is_refused_and_the_nonce_survives(smart_wallet, chain_settings):
    client = APIClient()
    message = siwe_message(smart_wallet.address, _nonce(client))
    someone_else = chain_settings.accounts.customers[4]
    for signature in (personal_sign(someone_else, message), "0x" + "ab" * 90):
        response = _verify(client, message, signature)
        assert response.status_code == 400, response.content
        assert response.json() == {
            "signature": ["was not accepted by the message's address, a contract wallet (EIP-1271 isValidSignature)"]
        }
    assert not WalletToken.objects.exists()
    # The owner signs the same message: accepted, with the nonce the refusals did not burn.
    assert _verify(client, message, smart_wallet.sign(message)).status_code == 200


def test_a_contract_that_is_not_a_wallet_cannot_sign_in(chain_settings):
    """The escrow contract has no isValidSignature: the call reverts, and that is a no."""
    client = APIClient()
    message = siwe_message(chain_settings.escrow, _nonce(client))
    response = _verify(client, message, personal_sign(chain_settings.accounts.deployer, message))
    assert response.status_code == 400
    assert "was not accepted" in response.json()["signature"][0]


def test_an_eoas_right_signature_costs_no_rpc_call_and_a_wrong_one_one(chain_settings, settings):
    customer, stranger = wallet("customer"), wallet("stranger")
    with RpcProxy(settings.CHAIN_RPC_URLS[0]) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        client = APIClient()
        message = siwe_message(customer.address, _nonce(client))
        refused = _verify(client, message, personal_sign(stranger, message))
        assert refused.status_code == 400
        assert refused.json() == {"signature": ["was not made by the message's address"]}
        assert proxy.seen == ["eth_getCode"]
        assert _verify(client, message, personal_sign(customer, message)).status_code == 200
        assert proxy.seen == ["eth_getCode"]


def test_while_the_node_is_down_an_eoa_signs_in_and_an_unverifiable_signature_gets_503(db, settings):
    """With the node unreachable an EOA's right signature still works (no RPC needed); a wrong
    one cannot be told apart from a contract wallet's, so the answer is 503, never a 500."""
    settings.CHAIN_RPC_URLS, settings.RPC_RETRIES = ["http://127.0.0.1:9"], 0
    customer, stranger = wallet("customer"), wallet("stranger")
    client = APIClient()
    message = siwe_message(customer.address, _nonce(client))
    unknown = _verify(client, message, personal_sign(stranger, message))
    assert unknown.status_code == 503 and "detail" in unknown.json()
    assert _verify(client, message, personal_sign(customer, message)).status_code == 200


def test_a_smart_wallet_pays_a_booking_and_the_fast_path_makes_it_paid(smart_wallet, chain_settings):
    chain = chain_settings
    mint_usdc(chain.w3, chain.usdc, smart_wallet.address, WALLET_FUNDS, chain.accounts.deployer.key)
    smart_wallet.execute(chain.usdc_contract.functions.approve(chain.escrow, WALLET_FUNDS))
    api = _sign_in(APIClient(), smart_wallet)

    response = api.post("/api/bookings/", {
        "provider": wallet("wallet-provider").address,
        "amount": "120",
        "scheduled_at": (timezone.now() + timedelta(days=3)).isoformat(),
        "description": "paid from a smart wallet",
    }, format="json")
    assert response.status_code == 201, response.content
    base = f"/api/bookings/{response.json()['id']}/"
    authorization = api.post(base + "authorize-payment/", format="json").json()
    assert authorization["message"]["customer"] == smart_wallet.address

    receipt = smart_wallet.execute(chain.escrow_contract.functions.createAndPayBooking(
        booking_auth_tuple(authorization["message"]), bytes.fromhex(authorization["signature"][2:])
    ))
    assert receipt["from"] == smart_wallet.owner.address  # the owner sent it; the wallet paid
    tx_hash = receipt["transactionHash"].to_0x_hex()
    submitted = api.post(base + "submit-transaction/", {"tx_hash": tx_hash}, format="json")
    assert submitted.status_code == 200, submitted.content

    booking = Booking.objects.get(uuid=response.json()["id"])
    assert (booking.status, booking.customer_address.lower(), booking.payment_tx_hash) == (
        "PAID", smart_wallet.address.lower(), tx_hash)
    assert chain.usdc_balance(smart_wallet.address) == WALLET_FUNDS - 120 * 10**6
    assert chain.get_booking(booking.chain_booking_id)[0] == smart_wallet.address
