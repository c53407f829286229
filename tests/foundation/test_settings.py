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
