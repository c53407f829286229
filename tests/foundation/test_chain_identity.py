"""The node and the contract are the ones the settings describe: eth_chainId is CHAIN_ID, the
contract's signer() and operator() are the addresses of the configured keys. A mismatch is one
line naming both values: at start-up the web process and the worker refuse to run, and health
shows the identity unhealthy. An unreachable node at start-up is no reason to refuse."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from bookme.checks import ChainIdentityMismatch, check_identity_at_start, identity_problems
from bookme.health import collect_health, public_health, refresh_chain_health
from common.config import Secret

pytestmark = [pytest.mark.chain, pytest.mark.django_db]

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).parent / "celery")
OTHER_KEY = "0x" + "42" * 32
OTHER_ADDRESS = Account.from_key(OTHER_KEY).address


def test_the_session_chain_matches_the_settings(chain_settings):
    assert identity_problems() == []
    check_identity_at_start()  # no refusal


def test_each_mismatch_names_both_values(chain_settings, settings):
    chain = chain_settings
    settings.CHAIN_ID = 8453
    assert identity_problems() == ["CHAIN_ID is 8453 but the node's eth_chainId is 31337"]
    settings.CHAIN_ID = chain.chain_id

    settings.SIGNER_PRIVATE_KEY = Secret(OTHER_KEY)
    settings.OPERATOR_PRIVATE_KEY = Secret(OTHER_KEY)
    assert identity_problems() == [
        f"SIGNER_PRIVATE_KEY is the key of {OTHER_ADDRESS} but the contract's signer() is "
        f"{chain.accounts.signer.address}",
        f"OPERATOR_PRIVATE_KEY is the key of {OTHER_ADDRESS} but the contract's operator() is "
        f"{chain.accounts.operator.address}",
    ]
    with pytest.raises(ChainIdentityMismatch, match="SIGNER_PRIVATE_KEY is the key of"):
        check_identity_at_start()

    # Where the operator key is not loaded (the web process) only the signer is compared.
    settings.OPERATOR_PRIVATE_KEY = None
    assert [p.split(" ")[0] for p in identity_problems()] == ["SIGNER_PRIVATE_KEY"]

    settings.ESCROW_CONTRACT_ADDRESS = OTHER_ADDRESS  # no code there
    assert identity_problems() == [
        f"ESCROW_CONTRACT_ADDRESS {OTHER_ADDRESS} has no BookingEscrow on chain 31337 (signer() answered '0x')"
    ]


def test_health_shows_a_mismatch_as_unhealthy_identity_with_the_detail_for_staff_only(chain_settings, settings):
    refresh_chain_health()  # the worker's part of health
    assert collect_health()["components"]["identity"]["status"] == "healthy"
    settings.SIGNER_PRIVATE_KEY = Secret(OTHER_KEY)
    refresh_chain_health()
    report = collect_health()
    identity = report["components"]["identity"]
    assert identity["status"] == "unhealthy" and report["status"] != "healthy"
    assert f"the contract's signer() is {chain_settings.accounts.signer.address}" in identity["error"]
    assert public_health(report)["components"]["identity"] == {"status": "unhealthy"}


def test_an_unreachable_node_at_start_up_is_logged_not_fatal(db, settings, caplog):
    settings.CHAIN_RPC_URLS, settings.RPC_RETRIES = ["http://127.0.0.1:9"], 0
    check_identity_at_start()
    assert "chain identity not checked at start-up" in caplog.text


def _environment(chain, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(BOOKME_READ_ENV_FILES="0", CHAIN_RPC_URLS=chain.url, CHAIN_ID=str(chain.chain_id),
               ESCROW_CONTRACT_ADDRESS=chain.escrow, USDC_CONTRACT_ADDRESS=chain.usdc)
    env.update(overrides)
    return env


def test_the_web_process_refuses_to_start_against_another_chain(chain_settings):
    env = _environment(chain_settings, CHAIN_ID="8453")
    env.pop("OPERATOR_PRIVATE_KEY")
    result = subprocess.run([sys.executable, "-c", "import bookme.wsgi"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "chain identity mismatch: CHAIN_ID is 8453 but the node's eth_chainId is 31337" in result.stderr


@pytest.mark.integration
def test_the_worker_refuses_to_start_with_an_operator_key_the_contract_does_not_know(chain_settings, tmp_path):
    env = _environment(chain_settings, BOOKME_PROCESS_ROLE="worker", OPERATOR_PRIVATE_KEY=OTHER_KEY,
                       BOOKME_STATE_DIR=str(tmp_path))
    result = subprocess.run(
        [CELERY, "-A", "bookme", "worker", "--concurrency=1", "--without-gossip", "--without-mingle",
         "-n", f"identity-{os.getpid()}@%h"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert (f"OPERATOR_PRIVATE_KEY is the key of {OTHER_ADDRESS} but the contract's operator() is "
            f"{chain_settings.accounts.operator.address}") in result.stderr, result.stderr[-3000:]


def test_a_primary_answering_nonsense_is_failed_over_not_taken_for_another_chain(chain_settings, settings):
    """A worker (re)started while its primary answers "0xdeadbeef" to everything starts on the
    healthy fallback instead of refusing to run (found by the chaos run)."""
    from tests.rpc_proxy import RpcProxy

    with RpcProxy(chain_settings.url, mode="garbage") as primary:
        settings.CHAIN_RPC_URLS = [primary.url, chain_settings.url]
        assert identity_problems() == []
        check_identity_at_start()  # no refusal
        assert "eth_chainId" in primary.seen  # it was asked first, and its answer refused
