"""Start a local anvil chain with the contracts deployed, for development.

    python manage.py localchain [--port 8545] [--block-time N] [--fresh] [--stop]

Starts anvil from node_modules in the background (pid in var/anvil.pid, log in
var/anvil.log) with anvil's deterministic accounts, deploys MockUSDC and BookingEscrow,
mints USDC to the test customers, and writes CHAIN_* settings to var/chain.env, which
settings.py reads before .env. Running it again is safe: a running node that still has the
deployed contracts is reused; otherwise it deploys again and rewrites var/chain.env.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from web3 import Web3

from contracts import anvil
from contracts.deploy import deploy_stack, mint_usdc

DEV_CUSTOMER_FUNDS = 100_000 * 10**6  # 100k USDC each


class Command(BaseCommand):
    help = "Start anvil (if needed), deploy MockUSDC + BookingEscrow (if needed), write var/chain.env."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8545)
        parser.add_argument("--block-time", type=float, default=None, help="seconds per block (default: automine)")
        parser.add_argument("--fresh", action="store_true", help="stop a running local anvil and start over")
        parser.add_argument("--stop", action="store_true", help="stop the local anvil and exit")
        parser.add_argument(
            "--state-dir", default=str(settings.STATE_DIR), help="where pid, log and chain.env go"
        )

    def handle(self, *args, port, block_time, fresh, stop, state_dir, **options):
        var = Path(state_dir)
        var.mkdir(parents=True, exist_ok=True)
        self.pid_file, self.log_file = var / "anvil.pid", var / "anvil.log"
        self.chain_env, self.state_file = var / "chain.env", var / "chain.json"
        if stop or fresh:
            self._stop_anvil()
            if stop:
                return
        url = f"http://127.0.0.1:{port}"
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 10}))
        if not self._answers(w3):
            self._start_anvil(port, block_time)
            if not self._wait(w3, 30):
                raise CommandError(f"anvil did not start on {url}; see {self.log_file}")
        chain_id = w3.eth.chain_id
        state = self._load_state()
        if state and state.get("chain_id") == chain_id and self._has_code(w3, state["escrow"], state["usdc"]):
            self.stdout.write(f"reusing the contracts already deployed on {url}")
        else:
            state = self._deploy(w3, chain_id)
        self._write_env(url, state)
        self.stdout.write(
            self.style.SUCCESS(
                f"local chain {chain_id} at {url}\n"
                f"  BookingEscrow {state['escrow']}\n  MockUSDC      {state['usdc']}\n"
                f"  start block   {state['start_block']}\n  settings in   {self.chain_env}"
            )
        )

    # -- steps ------------------------------------------------------------------------------
    def _deploy(self, w3: Web3, chain_id: int) -> dict:
        self.stdout.write("deploying MockUSDC and BookingEscrow")
        deployment = deploy_stack(
            w3,
            owner_key=anvil.DEPLOYER.private_key,
            signer_address=anvil.SIGNER.address,
            operator_address=anvil.OPERATOR.address,
            fee_recipient_address=anvil.FEE_RECIPIENT.address,
        )
        for account in anvil.USER_ACCOUNTS:
            mint_usdc(w3, deployment.usdc, account.address, DEV_CUSTOMER_FUNDS, anvil.DEPLOYER.private_key)
        state = {
            "chain_id": chain_id,
            "escrow": deployment.escrow,
            "usdc": deployment.usdc,
            "start_block": deployment.block_number,
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        return state

    def _write_env(self, url: str, state: dict) -> None:
        lines = [
            "# Written by `manage.py localchain`; read by bookme/settings.py before .env.",
            f"CHAIN_RPC_URLS={url}",
            f"CHAIN_ID={state['chain_id']}",
            f"ESCROW_CONTRACT_ADDRESS={state['escrow']}",
            f"USDC_CONTRACT_ADDRESS={state['usdc']}",
            f"CHAIN_START_BLOCK={state['start_block']}",
            # anvil's public test keys for the signer and operator roles the contract was deployed with.
            f"SIGNER_PRIVATE_KEY={anvil.SIGNER.private_key}",
            f"OPERATOR_PRIVATE_KEY={anvil.OPERATOR.private_key}",
        ]
        self.chain_env.write_text("\n".join(lines) + "\n")
        self.chain_env.chmod(0o600)

    def _start_anvil(self, port: int, block_time: float | None) -> None:
        command = anvil.AnvilProcess(port=port, block_time=block_time).command()
        self.stdout.write(f"starting anvil on 127.0.0.1:{port} (log: {self.log_file})")
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid_file.write_text(f"{process.pid}\n")
        self.state_file.unlink(missing_ok=True)  # a new node has none of the old deployments

    def _stop_anvil(self) -> None:
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text().strip() or 0)
        try:
            os.kill(pid, signal.SIGTERM)
            self.stdout.write(f"stopped anvil (pid {pid})")
        except ProcessLookupError:
            pass
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        time.sleep(0.5)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _answers(w3: Web3) -> bool:
        try:
            return w3.eth.chain_id is not None
        except Exception:  # nothing listening yet
            return False

    def _wait(self, w3: Web3, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._answers(w3):
                return True
            time.sleep(0.2)
        return False

    @staticmethod
    def _has_code(w3: Web3, *addresses: str) -> bool:
        return all(len(w3.eth.get_code(Web3.to_checksum_address(a))) > 0 for a in addresses)

    def _load_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
