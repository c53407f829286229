"""Run a local anvil node (installed from npm: @foundry-rs/anvil) and anvil's dev accounts.

    with AnvilProcess() as node:          # free port, chain id 31337
        w3 = Web3(Web3.HTTPProvider(node.url))

The dev accounts are anvil's defaults for the mnemonic
"test test test test test test test test test test test junk". They are public knowledge:
use them only on a local chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent

ANVIL_CANDIDATES = (
    REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil",
    REPO_ROOT / "node_modules" / ".bin" / "anvil",
)

DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_CHAIN_ID = 31337
DEFAULT_ACCOUNTS = 10
DEFAULT_BALANCE_ETH = 10000

#: Private keys of anvil's 10 default accounts (m/44'/60'/0'/0/i of DEFAULT_MNEMONIC).
ANVIL_PRIVATE_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)

#: Checksummed addresses of anvil's 10 default accounts (same order as the keys).
ANVIL_ADDRESSES: tuple[str, ...] = (
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
    "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
    "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
    "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
    "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
)


class DevAccount(NamedTuple):
    index: int
    address: str
    private_key: str


ANVIL_ACCOUNTS: tuple[DevAccount, ...] = tuple(
    DevAccount(i, a, k) for i, (a, k) in enumerate(zip(ANVIL_ADDRESSES, ANVIL_PRIVATE_KEYS, strict=False))
)

#: Dev roles. DEPLOYER is the escrow owner; SIGNER is the backend EIP-712 signer.
DEPLOYER = ANVIL_ACCOUNTS[0]
SIGNER = ANVIL_ACCOUNTS[1]
OPERATOR = ANVIL_ACCOUNTS[2]
FEE_RECIPIENT = ANVIL_ACCOUNTS[3]
#: Accounts 4..9 for customers, providers and inviters.
USER_ACCOUNTS: tuple[DevAccount, ...] = ANVIL_ACCOUNTS[4:10]


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def anvil_binary() -> Path:
    for candidate in ANVIL_CANDIDATES:
        if candidate.exists() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "anvil not found in node_modules; run `npm ci` (looked at: "
        + ", ".join(str(c) for c in ANVIL_CANDIDATES)
        + ")"
    )


class AnvilError(RuntimeError):
    pass


class AnvilProcess:
    """A local anvil node as a child process.

    ``port=None`` picks a free port. The node starts in ``start()`` (or on entering the
    context manager) and ``start()`` waits until it answers ``eth_chainId``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float | None = None,
        mnemonic: str = DEFAULT_MNEMONIC,
        accounts: int = DEFAULT_ACCOUNTS,
        balance: int = DEFAULT_BALANCE_ETH,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        self._fixed_port = port is not None
        self.port = port if port is not None else find_free_port(host)
        self.host = host
        self.chain_id = chain_id
        self.block_time = block_time
        self.mnemonic = mnemonic
        self.accounts = accounts
        self.balance = balance
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            str(anvil_binary()),
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--mnemonic", self.mnemonic,
            "--accounts", str(self.accounts),
            "--balance", str(self.balance),
            "--silent",
        ]
        if self.block_time is not None:
            cmd += ["--block-time", str(self.block_time)]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> AnvilProcess:
        if self.process is not None:
            raise AnvilError("anvil already started")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 (the node writes to it until stop())
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
            try:
                self.wait_ready(timeout)
                return self
            except AnvilError:
                exited = self.process.poll() is not None
                self.stop()
                if not exited or attempt == attempts - 1:
                    raise
                self.port = find_free_port(self.host)  # port race: try another one
        raise AssertionError("unreachable")

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def rpc(self, method: str, params: list | None = None, timeout: float = 5.0):
        """Minimal JSON-RPC call (no web3 needed); raises AnvilError on an RPC error."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(
            self.url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read())
        if "error" in reply:
            raise AnvilError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``eth_chainId`` until the node answers; raise AnvilError on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None:
                raise AnvilError("anvil not started")
            if self.process.poll() is not None:
                raise AnvilError(
                    f"anvil exited with code {self.process.returncode}: {self._output()}"
                )
            try:
                if int(self.rpc("eth_chainId", timeout=1.0), 16) == self.chain_id:
                    return
            except (OSError, urllib.error.URLError, ValueError, AnvilError):
                pass
            if time.monotonic() > deadline:
                raise AnvilError(f"anvil not ready at {self.url} after {timeout}s: {self._output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the node and wait for it (kill if it does not exit in time)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> AnvilProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:  # best effort: never leave a stray node behind
        with contextlib.suppress(Exception):
            self.stop(timeout=2.0)
