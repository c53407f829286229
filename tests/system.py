"""The system's processes for integration tests: the environment that points them at this test's
database, Redis and anvil. Starting and stopping them is benchmarks._processes.ProcessGroup."""
from __future__ import annotations

import os
from pathlib import Path

from django.db import connection


def test_database_url() -> str:
    """The database this test really uses (pytest-django's test_<name>), as a URL for child processes."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


test_database_url.__test__ = False  # a helper, not a test


def child_environment(chain, settings, state_dir: Path) -> dict:
    """What a worker, beat, web or ASGI process of this test needs; pytest's own variables left out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.update(
        BOOKME_READ_ENV_FILES="0",
        BOOKME_STATE_DIR=str(state_dir),  # beat's schedule file goes here, not into var/
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CHAIN_RPC_URLS=chain.url,
        CHAIN_ID=str(chain.chain_id),
        ESCROW_CONTRACT_ADDRESS=chain.escrow,
        USDC_CONTRACT_ADDRESS=chain.usdc,
        # Start at the current head: earlier blocks hold nothing of this test.
        CHAIN_START_BLOCK=str(chain.block_number()),
        PYTHONUNBUFFERED="1",
    )
    return env
