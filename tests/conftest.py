"""Project-wide fixtures: a real anvil with the contracts deployed, settings pointed at it,
and a clean Redis cache for every test (throttles and SIWE nonces live there)."""
from __future__ import annotations

import pytest

from contracts.anvil import AnvilProcess
from tests.chain_harness import ChainHarness
from tests.system import start_bin_run, stop_bin_run


@pytest.fixture(scope="session")
def chain():
    """One anvil for the whole session with MockUSDC + BookingEscrow deployed and customers funded."""
    process = AnvilProcess()
    process.start(timeout=60)
    try:
        harness = ChainHarness(process)
        yield harness
    finally:
        process.stop()


@pytest.fixture
def chain_settings(chain, settings):
    """Point Django's chain settings at the session anvil; undo the test's chain changes after it."""
    snapshot = chain.snapshot()
    settings.CHAIN_RPC_URLS = [chain.url]
    settings.CHAIN_ID = chain.chain_id
    settings.ESCROW_CONTRACT_ADDRESS = chain.escrow
    settings.USDC_CONTRACT_ADDRESS = chain.usdc
    settings.CHAIN_START_BLOCK = chain.start_block
    try:
        yield chain
    finally:
        chain.revert(snapshot)


@pytest.fixture(autouse=True)
def _clean_cache():
    """Each test starts with an empty cache (its own Redis DB, see pytest.ini)."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture(scope="session")
def bin_run(tmp_path_factory):
    """The whole system as `bin/run` starts it, once per session (it takes a minute to come up):
    the run command's own test and the reference client's share it. Each waits for what it needs."""
    system = start_bin_run(tmp_path_factory.mktemp("bin_run"))
    try:
        yield system
    finally:
        stop_bin_run(system)
