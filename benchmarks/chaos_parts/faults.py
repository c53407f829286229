"""The fault schedule of a chaos run and the thread that plays it.

Kinds: reorgs of anvil (`anvil_reorg`, depth 1-10; half of them put the dropped transactions
back into the new blocks, the others drop them: wallets send theirs again and the backend must
re-send the operator's), RPC faults on the backend's primary endpoint (rpc_faults: drop, HTTP
500, HTTP 429, garbage, timeout for a few requests; full outages for many seconds) and SIGKILL
of the Celery worker or beat (started again after a short pause). Times are spread evenly over
the run with a random jitter (seeded: a run can be repeated)."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import requests

from .rpc_faults import FaultyRpcProxy
from .system import System

BRIEF_RPC_FAULTS = ("drop", "http500", "http429", "garbage", "timeout")
#: Time for a block that anvil's interval miner has begun to be stored (it takes milliseconds).
ANVIL_MINING_SETTLE_SECONDS = 0.2


@dataclass(frozen=True)
class Plan:
    seconds: float
    reorgs: int
    kills: int
    rpc_faults: int  # brief ones; outages come on top
    outages: int
    outage_seconds: float


def schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds from the start, action) sorted by time; faults stop 10 % before the end of the run."""
    span = plan.seconds * 0.9

    def spread(count: int, action: str) -> list[tuple[float, str]]:
        step = span / max(count, 1)
        return [(min(span, step * (i + rng.uniform(0.1, 0.9))), action) for i in range(count)]

    events = spread(plan.reorgs, "reorg") + spread(plan.rpc_faults, "rpc") + spread(plan.outages, "outage")
    events += [(t, "kill-worker" if i % 2 == 0 else "kill-beat") for i, (t, _) in enumerate(spread(plan.kills, ""))]
    return sorted(events)


class FaultInjector(threading.Thread):
    def __init__(self, system: System, plan: Plan, rng: random.Random, log, *, floor_block: int):
        super().__init__(daemon=True)
        self.floor_block = floor_block  # reorgs never reach it: the wallets' funding is below it
        self.system = system
        self.proxy: FaultyRpcProxy = system.proxy
        self.plan = plan
        self.rng = rng
        self.log = log
        self.events = schedule(plan, rng)
        self.done: Counter[str] = Counter()
        self.reorg_depths: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stopped = threading.Event()
        self._restarts: list[threading.Thread] = []
        self.session = requests.Session()

    def run(self) -> None:
        started = time.monotonic()
        for at, action in self.events:
            if self.stopped.wait(max(0.0, started + at - time.monotonic())):
                break
            try:
                getattr(self, "_" + action.replace("-", "_"))()
            except Exception as exc:  # noqa: BLE001 (a fault that could not be injected is reported, the run goes on)
                self.errors.append(f"{action}: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        """Stop injecting, end any armed RPC fault, and wait for killed processes to be back."""
        self.stopped.set()
        self.join(60)
        self.proxy.disarm()
        for thread in self._restarts:
            thread.join(60)

    # -- actions ----------------------------------------------------------------------------
    def _anvil(self, method: str, params: list):
        reply = self.session.post(self.system.anvil.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                               "params": params}, timeout=30).json()
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply["result"]

    def _reorg(self) -> None:
        # anvil 1.7.1 unwinds in anvil_reorg without the miner's lock: racing the interval miner it leaves
        # the reorged heights null below the head for good, so mining is paused and a block in flight let finish.
        block_time = self.system.anvil.block_time
        if block_time:
            self._anvil("evm_setIntervalMining", [0])
            time.sleep(ANVIL_MINING_SETTLE_SECONDS)
        try:
            self._reorg_paused()
        finally:
            if block_time:
                self._anvil("evm_setIntervalMining", [max(1, round(block_time))])

    def _reorg_paused(self) -> None:
        depth = self.rng.randint(1, 10)
        head = int(self._anvil("eth_blockNumber", []), 16)
        depth = min(depth, head - self.floor_block)
        if depth < 1:
            return
        pairs = []
        kind = "reorg-dropping-txs"
        if self.rng.random() < 0.5:
            kind = "reorg-reincluding-txs"
            for number in range(head - depth + 1, head + 1):
                block = self._anvil("eth_getBlockByNumber", [hex(number), False]) or {}
                for tx_hash in block.get("transactions", []):
                    raw = self._anvil("eth_getRawTransactionByHash", [tx_hash])
                    # A block later than before: the same transactions, in order, at other heights.
                    pairs.append([raw, min(depth - 1, number - (head - depth + 1) + 1)])
        try:
            self._anvil("anvil_reorg", [depth, pairs])
        except RuntimeError:
            if not pairs:
                raise
            kind = "reorg-dropping-txs"
            self._anvil("anvil_reorg", [depth, []])
        self.done[kind] += 1
        self.reorg_depths[depth] += 1
        self.log(f"  fault: {kind} depth {depth} at block {head}")
        self._heal_holes(head)

    def _heal_holes(self, head: int) -> None:
        """Should a block the reorg replaced (or one just below) still be null, re-mine from it (a deeper
        reorg) and report it."""
        replies = self.session.post(self.system.anvil.url, json=[
            {"jsonrpc": "2.0", "id": n, "method": "eth_getBlockByNumber", "params": [hex(n), False]}
            for n in range(max(self.floor_block + 1, head - 20), head + 1)
        ], timeout=60).json()
        missing = sorted(reply["id"] for reply in replies if reply.get("result") is None)
        if not missing:
            return
        self.errors.append(f"reorg: anvil left {len(missing)} blocks null below its head {head}, from {missing[0]}")
        self._anvil("anvil_reorg", [head - missing[0] + 1, []])
        self.log(f"  fault: anvil left null blocks from {missing[0]}; re-mined them with a reorg from there")

    def _rpc(self) -> None:
        kind = self.rng.choice(BRIEF_RPC_FAULTS)
        count = self.rng.randint(2, 8) if kind != "timeout" else self.rng.randint(1, 3)
        self.proxy.arm(kind, requests_count=count)
        self.done[f"rpc-{kind}"] += 1
        self.log(f"  fault: rpc {kind} for the next {count} requests on the primary")

    def _outage(self) -> None:
        self.proxy.arm("outage", seconds=self.plan.outage_seconds)
        self.done["rpc-outage"] += 1
        self.log(f"  fault: full outage of the primary RPC for {self.plan.outage_seconds:.0f} s")

    def _kill(self, name: str) -> None:
        self.system.kill(name)
        self.done[f"sigkill-{name}"] += 1
        pause = self.rng.uniform(1.0, 5.0)
        self.log(f"  fault: SIGKILL {name}, back in {pause:.1f} s")

        def restart():
            time.sleep(pause)
            self.system.restart(name)

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        self._restarts.append(thread)

    def _kill_worker(self) -> None:
        self._kill("worker")

    def _kill_beat(self) -> None:
        self._kill("beat")

    # -- figures ----------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        reorgs = sum(v for k, v in self.done.items() if k.startswith("reorg"))
        kills = sum(v for k, v in self.done.items() if k.startswith("sigkill"))
        rpc = sum(v for k, v in self.done.items() if k.startswith("rpc"))
        return {"reorgs": reorgs, "process kills": kills, "rpc faults": rpc}
