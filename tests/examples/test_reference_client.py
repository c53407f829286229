"""The reference client (examples/client.mjs) works against the system as a developer runs it:
`bin/run` with its own ports, database, Redis and state directory (the `bin_run` fixture), then
the client twice (approve + pay, then --permit), each following its booking to COMPLETED over the
WebSocket."""
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
STARTUP_SECONDS = 180
CLIENT_TIMEOUT_SECONDS = 60


def _wait_until_up(web_port: int, asgi_port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "bin/run exited:\n" + log.read_text(errors="replace")[-3000:]
        try:
            healthy = requests.get(f"http://127.0.0.1:{web_port}/api/health/", timeout=2).status_code == 200
            with socket.create_connection(("127.0.0.1", asgi_port), timeout=1):
                pass
            if healthy:
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.5)
    pytest.fail("the system did not come up:\n" + log.read_text(errors="replace")[-3000:])


def _run_client(env: dict, *args: str) -> str:
    result = subprocess.run(
        ["node", "examples/client.mjs", *args, "--timeout", str(CLIENT_TIMEOUT_SECONDS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_SECONDS * 3,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_reference_client_pays_and_completes_a_booking_against_bin_run(bin_run):
    web_port, asgi_port, chain_port = bin_run.web_port, bin_run.asgi_port, bin_run.chain_port
    _wait_until_up(web_port, asgi_port, bin_run.process, bin_run.log_path)
    client_env = {
        "PATH": bin_run.env["PATH"],
        "BOOKME_API_URL": f"http://127.0.0.1:{web_port}",
        "BOOKME_WS_URL": f"ws://127.0.0.1:{asgi_port}/ws/bookings/",
        "BOOKME_RPC_URL": f"http://127.0.0.1:{chain_port}",
    }
    for args, payment_line in (((), "== 5. approve the USDC and pay"),
                               (("--permit",), "== 5. pay with an EIP-2612 permit")):
        output = _run_client(client_env, *args)
        for line in ("== 1. sign in with Ethereum", "customer 0x", "provider 0x", "stream ready",
                     "== 3. create a booking", "== 4. get the payment authorization", payment_line,
                     "submit-transaction: mined",
                     "-> PAID", "booking is PAID", "== 7. complete the service", "-> COMPLETED",
                     "booking is COMPLETED", "DONE: booking"):
            assert line in output, f"{line!r} missing:\n{output}"
        # The stream showed the booking's whole life, in order, each change once.
        changes = [line.split(" booking ")[0].split(") ")[0] for line in output.splitlines() if "event #" in line]
        statuses = [change.split("-> ")[1].split(" ")[0] for change in changes]
        assert statuses == ["PENDING_PAYMENT", "PAID", "COMPLETED"], output
