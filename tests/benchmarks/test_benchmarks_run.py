"""The benchmark scripts keep working: each runs end to end at a tiny size (figures at this size
mean nothing; docs/results.md quotes full-size runs). A script exits 1 when a target is missed, so
only a run that printed its figures without a traceback counts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("script", "args", "figure"),
    [
        ("bench_authorize_payment.py",
         ["--duration", "1", "--warmup", "0.2", "--rounds", "1", "--wallets", "4",
          "--database", "bookme_bench_smoke_auth"],
         "ratio authorize/trivial"),
        ("bench_catchup.py", ["--events", "400", "--per-block", "100", "--database", "bookme_bench_smoke_catchup"],
         "applied events/s"),
        ("bench_reconcile.py", ["--bookings", "300", "--paid", "30", "--database", "bookme_bench_smoke_reconcile"],
         "fewer round trips than the baseline"),
        ("bench_latency.py", ["--payments", "3", "--flows", "1", "--database", "bookme_bench_smoke_latency"],
         "submit-transaction on receipt"),
        ("bench_notifications.py",
         ["--clients", "20", "--rate", "20", "--seconds", "2", "--webhook-burst", "40", "--noop-tasks", "40",
          "--database", "bookme_bench_smoke_notifications"],
         "messages lost 0, duplicates 0"),
    ],
)
def test_benchmark_runs_end_to_end(script, args, figure):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        # A Redis database of their own (the notification benchmark flushes it); another suite beside
        # this one sets BENCH_REDIS_URL to keep apart.
        env={"PATH": "/usr/bin:/bin", "BENCH_REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")},
    )
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), output[-3000:]
    assert "Traceback" not in output and "FAILED" not in output, output[-3000:]
    assert figure in output, output[-3000:]
