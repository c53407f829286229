"""A real anvil node with the contracts deployed, for tests (and nothing else).

The harness talks to anvil through web3.py for convenience: anvil's default accounts are
unlocked, so transactions are sent with `eth_sendTransaction` from their addresses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from contracts import anvil as anvil_mod
from contracts.artifacts import load_artifact
from contracts.deploy import deploy_stack, mint_usdc

CUSTOMER_FUNDS = 1_000_000 * 10**6  # 1M USDC per test customer


@dataclass
class Accounts:
    deployer: LocalAccount
    signer: LocalAccount
    operator: LocalAccount
    fee_recipient: LocalAccount
    customers: list[LocalAccount] = field(default_factory=list)


class ChainHarness:
    def __init__(self, process: anvil_mod.AnvilProcess):
        self.process = process
        self.url = process.url
        self.w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))
        keys = anvil_mod.ANVIL_PRIVATE_KEYS
        self.accounts = Accounts(
            deployer=Account.from_key(keys[0]),
            signer=Account.from_key(keys[1]),
            operator=Account.from_key(keys[2]),
            fee_recipient=Account.from_key(keys[3]),
            customers=[Account.from_key(k) for k in keys[4:10]],
        )
        self.chain_id = self.w3.eth.chain_id
        deployment = deploy_stack(
            self.w3,
            owner_key=self.accounts.deployer.key,
            signer_address=self.accounts.signer.address,
            operator_address=self.accounts.operator.address,
            fee_recipient_address=self.accounts.fee_recipient.address,
        )
        self.deployment = deployment
        self.usdc = deployment.usdc
        self.escrow = deployment.escrow
        self.start_block = deployment.block_number
        self.escrow_contract = self.w3.eth.contract(address=self.escrow, abi=load_artifact("BookingEscrow")["abi"])
        self.usdc_contract = self.w3.eth.contract(address=self.usdc, abi=load_artifact("MockUSDC")["abi"])
        for customer in self.accounts.customers:
            mint_usdc(self.w3, self.usdc, customer.address, CUSTOMER_FUNDS, self.accounts.deployer.key)
            self.transact(self.usdc_contract.functions.approve(self.escrow, 2**256 - 1), customer.address)

    # -- raw node control -----------------------------------------------------------------
    def rpc(self, method: str, params: list | None = None):
        response = self.w3.provider.make_request(method, params or [])
        if "error" in response and response["error"]:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response["result"]

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def increase_time(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [hex(seconds)])
        self.mine()

    def set_next_timestamp(self, timestamp: int) -> None:
        self.rpc("evm_setNextBlockTimestamp", [hex(timestamp)])

    def latest_timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def block_number(self) -> int:
        return self.w3.eth.block_number

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        if not self.rpc("evm_revert", [snapshot_id]):
            raise RuntimeError(f"evm_revert({snapshot_id}) refused")

    # -- transactions -----------------------------------------------------------------------
    def transact(self, contract_function, sender: str, **tx) -> dict:
        """Send a contract call from an unlocked anvil account and return the mined receipt."""
        tx_hash = contract_function.transact({"from": sender, **tx})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.hex()} reverted")
        return receipt

    def pay_booking(self, auth: dict, signature: str | bytes, customer: str) -> dict:
        """createAndPayBooking from the customer with a backend authorization (message dict as signed)."""
        return self.transact(
            self.escrow_contract.functions.createAndPayBooking(booking_auth_tuple(auth), _bytes(signature)), customer
        )

    def complete_service(self, chain_booking_id: str, customer: str) -> dict:
        return self.transact(self.escrow_contract.functions.completeService(_bytes(chain_booking_id)), customer)

    def cancel_booking(self, auth: dict, signature: str | bytes, sender: str) -> dict:
        return self.transact(
            self.escrow_contract.functions.cancelBooking(cancellation_auth_tuple(auth), _bytes(signature)), sender
        )

    def emergency_cancel(self, chain_booking_id: str, reason: str) -> dict:
        return self.transact(
            self.escrow_contract.functions.emergencyCancelBooking(_bytes(chain_booking_id), reason),
            self.accounts.operator.address,
        )

    def get_booking(self, chain_booking_id: str):
        return self.escrow_contract.functions.getBooking(_bytes(chain_booking_id)).call()

    def usdc_balance(self, address: str) -> int:
        return self.usdc_contract.functions.balanceOf(address).call()


def _bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def _int(value) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


def booking_auth_tuple(auth: dict) -> tuple:
    """The BookingAuthorization struct, in the type string's field order, from a message dict."""
    return (
        _bytes(auth["bookingId"]),
        Web3.to_checksum_address(auth["customer"]),
        Web3.to_checksum_address(auth["provider"]),
        Web3.to_checksum_address(auth["inviter"]),
        _int(auth["amount"]),
        _int(auth["platformFeeRate"]),
        _int(auth["inviterFeeRate"]),
        _int(auth["expiry"]),
        _int(auth["nonce"]),
    )


def cancellation_auth_tuple(auth: dict) -> tuple:
    return (
        _bytes(auth["bookingId"]),
        _int(auth["customerAmount"]),
        _int(auth["providerAmount"]),
        _int(auth["platformAmount"]),
        _int(auth["inviterAmount"]),
        auth["reason"],
        _int(auth["expiry"]),
        _int(auth["nonce"]),
    )
