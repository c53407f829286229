"""The README's run command brings the whole system up: anvil with the contracts deployed,
migrations, web (answers on localhost), the ASGI stream and the relay, worker and beat (the
`bin_run` fixture starts it once; tests/examples runs the reference client against it)."""
import time

import pytest
import requests

pytestmark = pytest.mark.integration


def _wait_for(url: str, deadline: float) -> requests.Response | None:
    while time.monotonic() < deadline:
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException:
            time.sleep(0.5)
    return None


def test_bin_run_starts_chain_web_worker_and_beat(bin_run):
    web_port, chain_port, worker_metrics_port = bin_run.web_port, bin_run.chain_port, bin_run.worker_metrics_port
    tmp_path = bin_run.state_dir
    response = _wait_for(f"http://127.0.0.1:{web_port}/api/health/", time.monotonic() + 180)
    output = bin_run.output()
    assert response is not None, output[-3000:]
    body = response.json()
    assert response.status_code == 200, body
    assert body["components"]["database"]["status"] == "healthy"
    # The contract is deployed where var/chain.env says.
    chain_env = dict(
        line.split("=", 1) for line in (tmp_path / "chain.env").read_text().splitlines() if "=" in line
    )
    code = requests.post(
        f"http://127.0.0.1:{chain_port}",
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_getCode",
              "params": [chain_env["ESCROW_CONTRACT_ADDRESS"], "latest"]},
        timeout=5,
    ).json()["result"]
    assert len(code) > 1000
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        output = bin_run.output()
        if "beat: Starting" in output and "celery@" in output and "ready." in output:
            break
        time.sleep(0.5)
    assert "beat: Starting" in output, output[-3000:]
    assert "ready." in output, output[-3000:]  # the worker says "celery@host ready."
    assert f"http://127.0.0.1:{web_port}/admin/" in output  # it prints where to look
    assert f"ws://127.0.0.1:{bin_run.asgi_port}/ws/bookings/" in output
    assert "relay" in output and "Uvicorn running" in output, output[-3000:]
    # The chain part of health is the worker's (beat sends bookme.refresh_chain_health); until its
    # first run health says "unknown".
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = requests.get(f"http://127.0.0.1:{web_port}/api/health/", timeout=5).json()
        if body["components"]["rpc"]["status"] != "unknown":
            break
        time.sleep(1)
    assert body["components"]["rpc"]["status"] == "healthy", body
    # Web and worker each checked the chain they talk to at start-up (bookme/checks.py); the
    # web process did so without the operator key that .env and chain.env hold for the worker.
    assert output.count("chain identity checked") >= 2, output[-3000:]
    # The worker serves its own counters (the scans beat sends it run there).
    worker_metrics = _wait_for(f"http://127.0.0.1:{worker_metrics_port}/metrics", time.monotonic() + 30)
    assert worker_metrics is not None and worker_metrics.status_code == 200
    assert "bookme_chain_" in worker_metrics.text
