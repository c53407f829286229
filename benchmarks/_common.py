"""Shared parts of the chain benchmarks: an anvil with the contracts, a database, payments in bulk.

A benchmark runs in its own database (dropped and created again) against its own anvil, so it
never touches a developer's data. Django is configured through the environment like the real
processes, so subprocesses (worker, beat, gunicorn) started with `child_environment()` see the
same chain and database.

Payments are produced without signing transactions in Python: anvil runs with
`--auto-impersonate`, so `eth_sendTransaction` from any customer address is accepted, and the
transactions go in JSON-RPC batches. The backend signer's EIP-712 authorizations are computed
here with coincurve exactly as escrow.signing does (same struct hash, same domain).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
import urllib.parse
import uuid as uuid_lib
from dataclasses import dataclass, field
from pathlib import Path

import requests
from coincurve import PrivateKey
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from contracts.anvil import ANVIL_ADDRESSES, ANVIL_PRIVATE_KEYS, AnvilProcess  # noqa: E402
from contracts.artifacts import (  # noqa: E402
    BOOKING_AUTHORIZATION_TYPE,
    EIP712_DOMAIN_NAME,
    EIP712_DOMAIN_VERSION,
    usdc_abi,
)
from contracts.deploy import Deployment, deploy_stack, encode_call  # noqa: E402

SIGNER_KEY = ANVIL_PRIVATE_KEYS[1]
OPERATOR_KEY = ANVIL_PRIVATE_KEYS[2]
ZERO_ADDRESS = "0x" + "00" * 20
AUTH_TUPLE = "(bytes32,address,address,address,uint256,uint256,uint256,uint256,uint256)"
PAY_SELECTOR = keccak(text=f"createAndPayBooking({AUTH_TUPLE},bytes)")[:4]
PAYMENT_GAS = 300_000
_AUTH_TYPEHASH = keccak(text=BOOKING_AUTHORIZATION_TYPE)
_AUTH_WORDS = [
    "bytes32", "bytes32", "address", "address", "address", "uint256", "uint256", "uint256", "uint256", "uint256",
]
_DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")


def say(message: str) -> None:
    print(message, flush=True)


# -- the chain ---------------------------------------------------------------------------------
class RpcBatchError(RuntimeError):
    pass


class BenchChain:
    """An anvil (own port) with MockUSDC + BookingEscrow deployed; raw JSON-RPC batches."""

    def __init__(self, *, block_time: float | None = None, extra_args: tuple[str, ...] = ()):
        self.node = AnvilProcess(
            block_time=block_time,
            extra_args=["--auto-impersonate", "--no-request-size-limit", "--order", "fifo", *extra_args],
        )
        self.session = requests.Session()
        self.deployment: Deployment | None = None

    def start(self) -> BenchChain:
        from web3 import Web3

        self.node.start(timeout=60)
        w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 60}))
        self.deployment = deploy_stack(
            w3,
            owner_key=ANVIL_PRIVATE_KEYS[0],
            signer_address=ANVIL_ADDRESSES[1],
            operator_address=ANVIL_ADDRESSES[2],
            fee_recipient_address=ANVIL_ADDRESSES[3],
        )
        self.domain_separator = keccak(
            abi_encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [_DOMAIN_TYPEHASH, keccak(text=EIP712_DOMAIN_NAME), keccak(text=EIP712_DOMAIN_VERSION),
                 self.deployment.chain_id, self.deployment.escrow],
            )
        )
        self._signer = PrivateKey(bytes.fromhex(SIGNER_KEY[2:]))
        return self

    def stop(self) -> None:
        self.node.stop()

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def escrow(self) -> str:
        return self.deployment.escrow

    @property
    def usdc(self) -> str:
        return self.deployment.usdc

    def batch(self, calls: list[tuple[str, list]]) -> list:
        if not calls:
            return []
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        answer = self.session.post(self.url, json=body, timeout=600).json()
        errors = [a["error"] for a in answer if a.get("error")]
        if errors:
            raise RpcBatchError(f"{len(errors)} of {len(calls)} calls failed, first: {errors[0]}")
        return [a["result"] for a in sorted(answer, key=lambda a: a["id"])]

    def call(self, method: str, params: list | None = None):
        return self.batch([(method, params or [])])[0]

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def fund_customers(self, customers: list[str], *, usdc_each: int = 10**30) -> None:
        """ETH for gas (anvil_setBalance), USDC (open mint) and an unlimited approval of the escrow.

        The customers must be fresh addresses: their transactions use nonces 0 and 1 (explicit,
        so a batch never races on nonce assignment); their next nonce is 2. The approvals go in a
        second batch once the mints are mined: anvil, automining a batch's nonce 0 while it takes
        in nonce 1 of the same sender, can leave nonce 1 queued for good (seen under load).
        """
        approve = "0x" + encode_call(usdc_abi(), "approve", [self.escrow, 2**256 - 1]).hex()
        self.batch([("anvil_setBalance", [c, hex(10**24)]) for c in customers])
        mints = [("eth_sendTransaction", [{
            "from": c, "to": self.usdc, "data": "0x" + encode_call(usdc_abi(), "mint", [c, usdc_each]).hex(),
            "gas": hex(100_000), "nonce": "0x0",
        }]) for c in customers]
        approvals = [("eth_sendTransaction", [
            {"from": c, "to": self.usdc, "data": approve, "gas": hex(100_000), "nonce": "0x1"},
        ]) for c in customers]
        for calls in (mints, approvals):
            hashes = self.batch(calls)
            if not self.automining():
                self.call("evm_mine")
            self.wait_receipts(hashes)

    def automining(self) -> bool:
        return bool(self.call("anvil_getAutomine"))

    def wait_receipts(self, tx_hashes: list[str], timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            receipts = self.batch([("eth_getTransactionReceipt", [h]) for h in tx_hashes])
            if all(receipts):
                bad = [r["transactionHash"] for r in receipts if int(r["status"], 16) != 1]
                if bad:
                    raise RpcBatchError(f"transaction(s) reverted: {bad[:3]}")
                return receipts
            if time.monotonic() > deadline:
                missing = sum(1 for r in receipts if not r)
                raise TimeoutError(
                    f"{missing} of {len(tx_hashes)} receipts not mined in {timeout:.0f} s "
                    f"(automine {self.automining()}, txpool {self.call('txpool_status')})"
                )
            time.sleep(0.05)

    # -- payments ------------------------------------------------------------------------
    def authorization_signature(self, values: list) -> bytes:
        """The backend signer's signature of a BookingAuthorization (values in type order)."""
        struct_hash = keccak(abi_encode(_AUTH_WORDS, [_AUTH_TYPEHASH, *values]))
        digest = keccak(b"\x19\x01" + self.domain_separator + struct_hash)
        signature = self._signer.sign_recoverable(digest, hasher=None)
        return signature[:64] + bytes([signature[64] + 27])

    def payment_transaction(self, payment: Payment, *, nonce: int | None = None) -> dict:
        values = payment.auth_values()
        data = PAY_SELECTOR + abi_encode([AUTH_TUPLE, "bytes"], [tuple(values), self.authorization_signature(values)])
        tx = {"from": payment.customer, "to": self.escrow, "data": "0x" + data.hex(), "gas": hex(PAYMENT_GAS)}
        if nonce is not None:
            tx["nonce"] = hex(nonce)
        return tx


@dataclass
class Payment:
    """One booking as the database holds it and as the customer pays it on chain."""

    uuid: uuid_lib.UUID
    customer: str
    provider: str
    amount: int
    nonce: int
    expiry: int
    platform_fee_rate: int = 1000
    chain_booking_id: str = field(init=False)

    def __post_init__(self):
        self.chain_booking_id = "0x" + keccak(text=str(self.uuid)).hex()

    def auth_values(self) -> list:
        return [
            bytes.fromhex(self.chain_booking_id[2:]), self.customer, self.provider, ZERO_ADDRESS,
            self.amount, self.platform_fee_rate, 0, self.expiry, self.nonce,
        ]


def bench_addresses(label: str, count: int) -> list[str]:
    return [to_checksum_address(keccak(text=f"bookme-bench-{label}-{i}")[-20:]) for i in range(count)]


# -- configuration and database ---------------------------------------------------------------
def database_url(name: str) -> str:
    base = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    return f"{base.rstrip('/')}/{name}"


def configure_environment(chain: BenchChain, *, database: str, redis_url: str, extra: dict | None = None) -> dict:
    """Point this process's (and its children's) Django settings at the bench chain and database."""
    values = {
        "BOOKME_READ_ENV_FILES": "0",
        "DJANGO_SETTINGS_MODULE": "bookme.settings",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_DEBUG": "false",
        "DJANGO_HTTPS": "false",  # served over plain HTTP on localhost
        "DATABASE_URL": database_url(database),
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"bench-{database}",
        "CHAIN_RPC_URLS": chain.url,
        "CHAIN_ID": str(chain.deployment.chain_id),
        "ESCROW_CONTRACT_ADDRESS": chain.escrow,
        "USDC_CONTRACT_ADDRESS": chain.usdc,
        "CHAIN_START_BLOCK": str(chain.deployment.block_number),
        "SIGNER_PRIVATE_KEY": SIGNER_KEY,
        "OPERATOR_PRIVATE_KEY": OPERATOR_KEY,
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        **(extra or {}),
    }
    os.environ.update(values)
    return values


def drop_database(url: str, *, create_empty: bool = False) -> None:
    """DROP the database at `url` if it is there (whoever is connected to it) and, with `create_empty`,
    CREATE it again with nothing in it. Through the server's `postgres` database, on `url`'s server."""
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    name = sql.Identifier(parts.path.strip("/"))
    with psycopg.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if create_empty:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def recreate_database(name: str) -> None:
    """DROP (if there) and CREATE the benchmark's own database."""
    drop_database(database_url(name), create_empty=True)


def setup_django(*, migrate: bool = True) -> None:
    import django
    from django.core.management import call_command

    django.setup()
    if migrate:
        call_command("migrate", verbosity=0, interactive=False)


def insert_bookings(payments: list[Payment], *, scheduled_at, now) -> None:
    """PENDING_PAYMENT bookings with their payment nonce rows, in bulk (one COPY each)."""
    import json

    from django.db import connection

    from escrow.models import Booking, SignatureNonce

    booking_table = Booking._meta.db_table
    nonce_table = SignatureNonce._meta.db_table
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3 cursor: COPY support
        with raw.copy(
            f"""COPY {booking_table} (uuid, chain_booking_id, customer_address, provider_address, inviter_address,
                amount, platform_fee_rate, inviter_fee_rate, scheduled_at, description, status,
                status_before_cancellation, cancellation_reason, payment_tx_hash, completion_tx_hash,
                cancellation_tx_hash, chain_data, needs_attention, status_changed_at,
                created_at, updated_at) FROM STDIN"""
        ) as copy:
            for p in payments:
                copy.write_row((
                    p.uuid, p.chain_booking_id, p.customer, p.provider, "", p.amount, p.platform_fee_rate, 0,
                    scheduled_at, "bench", "PENDING_PAYMENT", "", "", "", "", "", "{}", False, now, now, now,
                ))
        cursor.execute(f"SELECT chain_booking_id, id FROM {booking_table}")
        ids = dict(cursor.fetchall())
        with raw.copy(
            f"""COPY {nonce_table} (nonce, booking_id, kind, expires_at, digest, payload, consumed_tx_hash,
                created_at) FROM STDIN"""
        ) as copy:
            for p in payments:
                copy.write_row((
                    p.nonce, ids[p.chain_booking_id], "payment", scheduled_at, "0x" + "00" * 32,
                    json.dumps({"nonce": str(p.nonce)}), "", now,
                ))
        cursor.execute(f"ANALYZE {booking_table}; ANALYZE {nonce_table}")


# -- measuring ------------------------------------------------------------------------------------
def rss_mib(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread: start, peak, end."""

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - started, rss_mib(self.pid)))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, RuntimeError):
            self.samples.append((self.samples[-1][0] if self.samples else 0.0, rss_mib(self.pid)))

    @property
    def start(self) -> float:
        return self.samples[0][1]

    @property
    def peak(self) -> float:
        return max(s[1] for s in self.samples)

    @property
    def end(self) -> float:
        return self.samples[-1][1]

    def quartiles(self) -> list[float]:
        """RSS at 25/50/75 % of the run's duration (for a flatness check beyond start and end)."""
        if len(self.samples) < 4:
            return [s[1] for s in self.samples]
        n = len(self.samples)
        return [self.samples[n * q // 4][1] for q in (1, 2, 3)]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | str = "self", *, reaped_children: bool = False) -> float:
    """User + system CPU of a process from /proc (with `reaped_children`, also that of its
    children that exited and were waited for: PostgreSQL's postmaster holds its ended backends')."""
    with open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
    fields = data[data.rindex(")") + 2:].split()  # fields[0] is the state (stat field 3)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _CLOCK_TICKS


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL server process on this machine: backends, WAL writer,
    checkpointer... and, through the postmaster, backends that ended (a lane's connection)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() != "postgres":
                    continue
            total += process_cpu_seconds(entry, reaped_children=True)
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between listing and reading: the postmaster now counts it
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / _CLOCK_TICKS, sum(ticks[:8]) / _CLOCK_TICKS


class CpuMeter:
    """Where the CPU went during a measured step: this process, PostgreSQL, anvil, and the
    rest of the machine. With the machine's cores this bounds the rate any overlap of the
    three could reach (`ceiling`): the benchmark's work per event, not the machine's noise."""

    def __init__(self, anvil_pid: int):
        self.anvil_pid = anvil_pid
        self.cores = os.cpu_count() or 1

    def _read(self) -> dict[str, float]:
        busy, total = machine_cpu_seconds()
        return {
            "scanner": process_cpu_seconds(),
            "postgres": postgres_cpu_seconds(),
            "anvil": process_cpu_seconds(self.anvil_pid),
            "busy": busy,
            "total": total,
        }

    def __enter__(self):
        self._wall = time.perf_counter()
        self._before = self._read()
        return self

    def __exit__(self, *exc):
        after = self._read()
        self.wall = time.perf_counter() - self._wall
        self.seconds = {k: after[k] - self._before[k] for k in after}
        self.seconds["other"] = max(
            0.0, self.seconds["busy"] - self.seconds["scanner"] - self.seconds["postgres"] - self.seconds["anvil"]
        )

    def per_event_us(self, events: int) -> dict[str, float]:
        return {k: self.seconds[k] / events * 1e6 for k in ("scanner", "postgres", "anvil", "other")}

    def ceiling(self, events: int) -> float:
        """Events/s if the scanner's, PostgreSQL's and anvil's CPU per event kept every core busy."""
        us = self.per_event_us(events)
        return self.cores / ((us["scanner"] + us["postgres"] + us["anvil"]) / 1e6)

    def utilisation(self) -> float:
        """Share of all cores busy during the step (whoever used them)."""
        return self.seconds["busy"] / self.seconds["total"] if self.seconds["total"] else 0.0


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0-100), inclusive method (no interpolation surprises on small samples)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1]
