"""Configuration comes from the environment only; a bad required setting stops start-up
with one line naming the variable (and never showing a secret's value)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from common.config import Secret

ROOT = Path(__file__).resolve().parents[2]
SECRET_VALUE = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def run_check(**overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["BOOKME_READ_ENV_FILES"] = "0"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_valid_environment_passes_django_check():
    result = run_check()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "variable, value, reason",
    [
        ("CHAIN_ID", None, "is required but not set"),
        ("CHAIN_ID", "abc", "must be an integer"),
        ("CHAIN_ID", "0", "must be at least 1"),
        ("CHAIN_RPC_URLS", None, "is required but not set"),
        ("CHAIN_RPC_URLS", "ftp://node", "must be a comma-separated list"),
        ("ESCROW_CONTRACT_ADDRESS", "0x1234", "must be a 20-byte hex address"),
        ("USDC_CONTRACT_ADDRESS", None, "is required but not set"),
        ("SIGNER_PRIVATE_KEY", None, "is required but not set"),
        ("SIGNER_PRIVATE_KEY", SECRET_VALUE[:-2] + "zz", "must be a 32-byte hex private key"),
        ("OPERATOR_PRIVATE_KEY", "0x" + "00" * 32, "must be a 32-byte hex private key"),
        ("DATABASE_URL", "mysql://root@localhost/db", "must be a postgres:// URL"),
        ("DJANGO_SECRET_KEY", None, "is required but not set"),
        ("DJANGO_DEBUG", "maybe", "must be a boolean"),
        ("CHAIN_START_BLOCK", "-5", "must be at least 0"),
    ],
)
def test_bad_setting_stops_startup_with_one_line(variable, value, reason):
    result = run_check(**{variable: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"bookme: configuration error: {variable} ")
    assert reason in lines[0]
    assert "Traceback" not in result.stderr
    if value and "KEY" in variable:
        assert value not in result.stderr


def test_secret_never_shows_its_value():
    key = settings.SIGNER_PRIVATE_KEY
    assert isinstance(key, Secret)
    assert key.reveal().startswith("0x")
    for shown in (repr(key), str(key), f"{key}", repr(settings.OPERATOR_PRIVATE_KEY)):
        assert key.reveal()[2:] not in shown
        assert settings.OPERATOR_PRIVATE_KEY.reveal()[2:] not in shown


def test_django_error_reporter_hides_signer_key():
    from django.views.debug import SafeExceptionReporterFilter

    cleansed = SafeExceptionReporterFilter().get_safe_settings()
    assert SECRET_VALUE[2:] not in repr(cleansed)


def test_rpc_urls_are_a_list_and_addresses_are_checksummed():
    assert isinstance(settings.CHAIN_RPC_URLS, list)
    assert settings.ESCROW_CONTRACT_ADDRESS == "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"


# -- which process holds which key (BOOKME_PROCESS_ROLE) ---------------------------------------------
OPERATOR_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
SHOW_KEYS = (
    "import os; from django.conf import settings; "
    "print(settings.PROCESS_ROLE, settings.OPERATOR_PRIVATE_KEY, 'OPERATOR_PRIVATE_KEY' in os.environ)"
)


def run_python(code: str, **overrides) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with the test environment and `overrides` (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["BOOKME_READ_ENV_FILES"] = "0"
    env["RPC_RETRIES"] = "0"  # the web process's start-up identity check meets no node here: skipped
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _config_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("variable", ["OPERATOR_PRIVATE_KEY", "CONTRACT_OWNER_PRIVATE_KEY"])
def test_the_web_process_refuses_to_start_with_a_key_that_sends(variable):
    """The WSGI entry point is the web process whatever BOOKME_PROCESS_ROLE says."""
    result = run_python("import bookme.wsgi", **{"OPERATOR_PRIVATE_KEY": None, variable: OPERATOR_KEY,
                                                 "BOOKME_PROCESS_ROLE": "worker"})
    line = _config_error(result)
    assert line == (f"bookme: configuration error: {variable} must not be set for the web process "
                    "(BOOKME_PROCESS_ROLE=web): only the worker sends transactions")
    assert OPERATOR_KEY[2:] not in result.stderr


def test_the_web_process_starts_without_the_operator_key_and_signs_with_its_own():
    result = run_python("import bookme.wsgi; from escrow.signing import signer_address; print(signer_address()); "
                        + SHOW_KEYS, OPERATOR_PRIVATE_KEY=None)
    assert result.returncode == 0, result.stderr
    signer, keys = result.stdout.strip().splitlines()
    assert signer == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil account 1, the test signer
    assert keys == "web None False"


def test_beat_refuses_the_operator_key_and_the_worker_requires_it():
    assert _config_error(run_check(BOOKME_PROCESS_ROLE="beat")).startswith(
        "bookme: configuration error: OPERATOR_PRIVATE_KEY must not be set for the beat process")
    assert _config_error(run_check(BOOKME_PROCESS_ROLE="worker", OPERATOR_PRIVATE_KEY=None)) == (
        "bookme: configuration error: OPERATOR_PRIVATE_KEY is required but not set")
    assert _config_error(run_check(BOOKME_PROCESS_ROLE="websocket")) == (
        "bookme: configuration error: BOOKME_PROCESS_ROLE must be one of web, worker, beat, command")
    worker = run_python(SHOW_KEYS, BOOKME_PROCESS_ROLE="worker")
    assert worker.stdout.strip() == "worker Secret('********') True", worker.stderr
    # Commands (manage.py, shells) hold it where it is set, and run without it where it is not.
    assert run_python(SHOW_KEYS, OPERATOR_PRIVATE_KEY=None).stdout.strip() == "command None False"


def test_the_web_process_drops_a_key_that_came_from_the_shared_env_files(tmp_path):
    """bin/run's .env and var/chain.env serve every process of a checkout: the web process takes
    no key that sends from them, and leaves none in its environment."""
    (tmp_path / "chain.env").write_text(f"OPERATOR_PRIVATE_KEY={OPERATOR_KEY}\n")
    result = run_python("import bookme.wsgi; " + SHOW_KEYS, OPERATOR_PRIVATE_KEY=None, BOOKME_READ_ENV_FILES="1",
                        BOOKME_STATE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "web None False"
    worker = run_python(SHOW_KEYS, OPERATOR_PRIVATE_KEY=None, BOOKME_READ_ENV_FILES="1",
                        BOOKME_STATE_DIR=str(tmp_path), BOOKME_PROCESS_ROLE="worker")
    assert worker.stdout.strip() == "worker Secret('********') True", worker.stderr
