"""Fixtures for the BookingEscrow contract tests (real anvil; no Django needed).

Session: one anvil node (``contract_anvil``), one web3 (``contract_w3``), one deployment
with funded, approving customers (``contract_deployment``) and a test client
(``contract_chain``, a ``contracts.testing.EscrowChain``). Every test that touches the chain
runs inside an ``evm_snapshot``/``evm_revert`` pair, so tests are isolated and
order-independent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:  # `contracts` must import without Django's path setup
    sys.path.insert(0, str(_REPO_ROOT))

from web3 import Web3  # noqa: E402

from contracts.anvil import DEPLOYER, FEE_RECIPIENT, OPERATOR, SIGNER, AnvilProcess  # noqa: E402
from contracts.artifacts import usdc_abi  # noqa: E402
from contracts.deploy import Deployment, deploy_stack, mint_usdc, transact  # noqa: E402
from contracts.testing import (  # noqa: E402
    CUSTOMER,
    CUSTOMER2,
    INITIAL_CUSTOMER_BALANCE,
    MAX_UINT256,
    EscrowChain,
)


@pytest.fixture(scope="session")
def contract_anvil():
    node = AnvilProcess()
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def contract_w3(contract_anvil):
    w3 = Web3(Web3.HTTPProvider(contract_anvil.url, request_kwargs={"timeout": 30}))
    assert w3.eth.chain_id == 31337
    return w3


@pytest.fixture(scope="session")
def contract_deployment(contract_w3) -> Deployment:
    """MockUSDC + BookingEscrow; CUSTOMER and CUSTOMER2 hold USDC and approved the escrow."""
    w3 = contract_w3
    dep = deploy_stack(
        w3,
        owner_key=DEPLOYER.private_key,
        signer_address=SIGNER.address,
        operator_address=OPERATOR.address,
        fee_recipient_address=FEE_RECIPIENT.address,
    )
    for acct in (CUSTOMER, CUSTOMER2):
        mint_usdc(w3, dep.usdc, acct.address, INITIAL_CUSTOMER_BALANCE, DEPLOYER.private_key)
        transact(w3, dep.usdc, usdc_abi(), "approve", [dep.escrow, MAX_UINT256], acct.private_key)
    return dep


@pytest.fixture(scope="session")
def contract_chain(contract_w3, contract_deployment) -> EscrowChain:
    return EscrowChain(contract_w3, contract_deployment)


@pytest.fixture(autouse=True)
def _contract_evm_snapshot(request):
    """Wrap each chain-using test in evm_snapshot/evm_revert (tests without chain fixtures skip it)."""
    if not any(name.startswith("contract_") for name in request.fixturenames):
        yield
        return
    chain: EscrowChain = request.getfixturevalue("contract_chain")
    snap = chain.snapshot()
    try:
        yield
    finally:
        chain.revert(snap)


@pytest.fixture(autouse=True)
def _clean_cache():
    """Overrides the project-wide autouse cache reset (tests/conftest.py): the contract tests
    touch neither Django nor Redis, so they run without them (e.g. `pytest -p no:django`)."""
    yield
