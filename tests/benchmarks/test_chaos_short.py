"""The chaos run (benchmarks/chaos.py) works end to end at a short size: the whole system up on
its own ports, flows of every kind, a few reorgs, RPC faults, one outage and a SIGKILL of the
worker and of beat, then every invariant holds. docs/chaos.md has the full run.

The run gets its own database (this suite's name + "_chaos", dropped and created by the run) and
the Redis database two above this suite's (flushed by the run: its broker must not be ours)."""
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.chain]

INVARIANTS = (
    "status (database vs getBooking)", "escrow USDC balance", "platform fee ledger", "inviter payouts",
    "provider earnings", "events (database vs chain logs)", "dead letters", "orphans", "open attention",
    "operator sends stuck", "auto-complete", "manage.py check_ledger", "HTTP 5xx answers seen by the clients",
)


def chaos_targets() -> tuple[str, str, str]:
    """(postgres server URL, database name, Redis URL) for the run, derived from this suite's."""
    database = urlsplit(os.environ["DATABASE_URL"])
    redis = urlsplit(os.environ["REDIS_URL"])
    redis_db = int(redis.path.strip("/") or 0)
    server = urlunsplit((database.scheme, database.netloc, "", "", ""))
    name = database.path.strip("/") + "_chaos"
    return server, name, urlunsplit((redis.scheme, redis.netloc, f"/{(redis_db + 2) % 16}", "", ""))


def test_short_chaos_run_holds_every_invariant():
    server, database, redis_url = chaos_targets()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--minutes", "0.75", "--flows", "3",
         "--reorgs", "3", "--kills", "2", "--rpc-faults", "4", "--outages", "1", "--outage-seconds", "10",
         "--settle-seconds", "280", "--database", database, "--postgres-url", server, "--redis-url", redis_url],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "RESULT: all invariants held" in output, output[-5000:]
    for name in INVARIANTS:
        assert f"[ok] {name}" in output, (name, output[-5000:])
    assert "[BROKEN]" not in output and "Traceback" not in output, output[-5000:]
    assert "reorgs 3, process kills 2, rpc faults 5" in output, output[-5000:]
    assert "time to converge: " in output and "NOT converged" not in output, output[-5000:]
