"""The chaos run's printed result: what ran, what was injected, every invariant with its numbers."""
from __future__ import annotations

import re
from collections import Counter

from .faults import FaultInjector
from .flows import DriverStats
from .invariants import Check


def render(*, stats: DriverStats, injector: FaultInjector, checks: list[Check], converge_seconds: float | None,
           settle_limit: float, log_errors: dict[str, int], proxy_faulted: dict[str, int], restarts: dict[str, int],
           exits: list[str], extra_failures: list[str]) -> tuple[list[str], bool]:
    lines = ["", "== flows =="]
    total = sum(stats.flows.values())
    lines.append(f"finished {total}: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.flows.items())))
    lines.append("payments: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.payments.items()))
                 + "; confirmed by: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.confirmations.items())))
    lines.append(f"sent again after they reverted (payment not mined again yet): cancellations "
                 f"{stats.cancellations_sent_again}, completions {stats.completions_sent_again}; payments made again "
                 f"after every one sent reverted: {stats.payments_sent_again}; bookings that waited at the unpaid "
                 f"cap: {stats.unpaid_cap_waits}")
    lines.append(f"wallet transactions sent again after a reorg dropped them: {stats.rebroadcasts}; "
                 f"refused by the node: {dict(stats.resend_refusals)}; wallets that took their transactions out "
                 f"of anvil's pool to send them again (stuck queued after a reorg): {stats.pool_resets}")
    lines.append(f"flows stalled: {len(stats.stalled)} {dict(_kinds(stats.stalled).most_common(5))}")
    lines.append(f"flows broken by a driver error: {len(stats.errors)} {stats.errors[:5]}")
    lines.append(f"cancellation policy tier not the expected one: {len(stats.tier_mismatches)} "
                 f"{stats.tier_mismatches[:5]}")
    lines += ["", "== faults =="]
    totals = injector.totals()
    lines.append(", ".join(f"{k} {v}" for k, v in totals.items()))
    lines.append("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(injector.done.items())))
    lines.append("reorg depths: " + ", ".join(f"{d}: {n}" for d, n in sorted(injector.reorg_depths.items())))
    lines.append("primary RPC requests faulted: " + ", ".join(f"{k} {v}" for k, v in sorted(proxy_faulted.items())))
    lines.append(f"processes started again after SIGKILL: {restarts}")
    lines.append(f"processes that ended on their own (started again, as a process manager would): {len(exits)}")
    lines += [f"    {line}" for line in exits[:10]]
    if injector.errors:
        lines.append(f"faults that could not be injected: {len(injector.errors)} {injector.errors[:5]}")
    lines += ["", "== invariants (after the faults stopped and the system settled) =="]
    for check in checks:
        lines.append(f"[{'ok' if check.ok else 'BROKEN'}] {check.name}: {check.detail}")
    five_xx = sum(stats.http_5xx.values())
    lines.append(f"[{'ok' if not five_xx else 'BROKEN'}] HTTP 5xx answers seen by the clients: {five_xx} "
                 f"{dict(list(stats.http_5xx.items())[:5])}")
    lines.append(f"     (503 with Retry-After, the documented retryable refusal, retried: {stats.retryable_503})")
    lines.append(f"     (tracebacks in the process logs: {log_errors})")
    if converge_seconds is None:
        lines.append(f"time to converge: NOT converged within {settle_limit:.0f} s after the last fault")
    else:
        lines.append(f"time to converge: {converge_seconds:.1f} s after the last fault")
    ok = all(c.ok for c in checks) and not five_xx and converge_seconds is not None and not extra_failures
    ok = ok and not stats.stalled and not stats.errors and not stats.tier_mismatches
    for failure in extra_failures:
        lines.append(f"[BROKEN] {failure}")
    lines.append("")
    lines.append("RESULT: " + ("all invariants held" if ok else "FAILED"))
    return lines, ok


def _kinds(messages: list[str]) -> Counter:
    """Messages counted with their hashes, ids and numbers blanked: what kind of thing went wrong."""
    return Counter(re.sub(r"0x[0-9a-fA-F]+|[0-9a-f]{8}-[0-9a-f-]{27}|\d+", "#", m)[:160] for m in messages)
