"""System health: what each dependency says, folded into healthy / degraded / unhealthy.

Components, checked in order (a later check may use an earlier one's result):
- database: SELECT 1. The only critical component: unhealthy here makes the whole service
  unhealthy (503); anything else only degrades it (200).
- redis: a cache round trip (Celery broker, throttles, SIWE nonces).
- rpc: the node's head block and its age (degraded when older than HEALTH_HEAD_MAX_AGE).
- contract: whether the escrow is paused (degraded while paused: payments and completions stop),
  with the last pause record (who, why, when).
- identity: the node's eth_chainId is CHAIN_ID and the contract's signer()/operator() are the
  configured keys' addresses (unhealthy on a mismatch, naming both values; bookme/checks.py).
- sync: the scanner cursor's lag behind the head in blocks and the age of its last scan
  (degraded beyond HEALTH_SYNC_MAX_LAG_BLOCKS / HEALTH_SYNC_MAX_SCAN_AGE or before the first
  scan; unhealthy when a deep reorg halted the scanner).

The chain part (rpc, contract, identity) asks the node, so a request never runs it: the worker
does, every HEALTH_CHAIN_REFRESH_SECONDS (bookme.tasks → refresh_chain_health), and leaves the
result in the cache. A request only reads that; missing, unreadable or older than
HEALTH_CHAIN_MAX_AGE, each of its components is "unknown" (which degrades, like a failure of a
non-critical part). A loop of requests on health therefore costs a query and two cache reads
each, never the RPC quota the scanner needs.

Who sees what (bookme.views.health): the public answer is the overall status and the status of
each component, nothing else (public_health). Staff signed in to the console get the details
too: who paused the contract and why, error messages, figures.
"""
from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from chain_events.models import SyncCursor
from chain_events.rpc import get_rpc_client
from reconciliation.selectors import contract_paused, last_effective_pause_record

from .checks import identity_problems

log = logging.getLogger(__name__)

HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN = "healthy", "degraded", "unhealthy", "unknown"
CHAIN_HEALTH_CACHE_KEY = "health:chain"


def check_database(components: dict | None = None) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"status": HEALTHY}


def check_redis(components: dict | None = None) -> dict:
    key = "health:ping"
    cache.set(key, "1", 10)
    if cache.get(key) != "1":
        return {"status": UNHEALTHY, "error": "cache round trip failed"}
    return {"status": HEALTHY}


def check_rpc(components: dict | None = None) -> dict:
    client = get_rpc_client()
    block = client.call("eth_getBlockByNumber", ["latest", False])
    head = int(block["number"], 16)
    age = max(0, int(time.time()) - int(block["timestamp"], 16))
    status = HEALTHY if age <= settings.HEALTH_HEAD_MAX_AGE.total_seconds() else DEGRADED
    return {"status": status, "head_block": head, "head_age_seconds": age}


def _last_pause() -> dict | None:
    entry = last_effective_pause_record()
    if entry is None:
        return None
    return {"action": entry.action, "actor": entry.actor, "reason": entry.reason, "at": entry.created_at.isoformat()}


def check_contract(components: dict | None = None) -> dict:
    result = {"last_pause_record": _last_pause()}
    if (components or {}).get("rpc", {}).get("status") == UNHEALTHY:
        # Do not wait for the same unreachable node twice.
        return {"status": UNHEALTHY, "error": "RPC unavailable: paused() not read", **result}
    paused = contract_paused()
    return {"status": DEGRADED if paused else HEALTHY, "paused": paused, **result}


def check_identity(components: dict | None = None) -> dict:
    """The node's chain id and the contract's signer/operator are those of the settings (bookme/checks.py)."""
    if (components or {}).get("rpc", {}).get("status") == UNHEALTHY:
        return {"status": UNHEALTHY, "error": "RPC unavailable: chain identity not read"}
    problems = identity_problems()
    return {"status": UNHEALTHY, "error": "; ".join(problems)} if problems else {"status": HEALTHY}


def check_sync(components: dict | None = None) -> dict:
    cursor = SyncCursor.objects.filter(
        chain_id=settings.CHAIN_ID, contract_address=settings.ESCROW_CONTRACT_ADDRESS.lower()
    ).first()
    if cursor is None:
        return {"status": DEGRADED, "error": "the scanner has not run yet"}
    # The head the worker last read when it did; the head seen at the last scan otherwise.
    head = (components or {}).get("rpc", {}).get("head_block", cursor.head_block)
    lag = None if head is None else max(0, head - cursor.last_block)
    scan_age = None
    if cursor.last_scan_at is not None:
        scan_age = max(0, int((timezone.now() - cursor.last_scan_at).total_seconds()))
    result = {
        "cursor_block": cursor.last_block,
        "lag_blocks": lag,
        "last_scan_at": cursor.last_scan_at.isoformat() if cursor.last_scan_at else None,
        "last_scan_age_seconds": scan_age,
        "halted": cursor.halted,
        # The kind of error (the console's sync cursor page has the whole message).
        "last_error": cursor.last_error.split(":", 1)[0] or None,
        "last_error_at": cursor.last_error_at.isoformat() if cursor.last_error and cursor.last_error_at else None,
    }
    if cursor.halted:
        return {"status": UNHEALTHY, "error": f"scanner halted: {cursor.halt_reason}"[:300], **result}
    too_far = lag is None or lag > settings.HEALTH_SYNC_MAX_LAG_BLOCKS
    too_old = scan_age is None or scan_age > settings.HEALTH_SYNC_MAX_SCAN_AGE.total_seconds()
    failing = bool(cursor.last_error)
    return {"status": DEGRADED if too_far or too_old or failing else HEALTHY, **result}


# The chain part, run by the worker (refresh_chain_health); the local parts, run by each request.
CHAIN_CHECKS = {
    "rpc": check_rpc,
    "contract": check_contract,
    "identity": check_identity,
}
SERVICE_CHECKS = {
    "database": check_database,
    "redis": check_redis,
}
SYNC_CHECKS = {
    "sync": check_sync,
}
# A dependency whose failure makes the service unusable; others only degrade it.
CRITICAL = {"database"}


def _run(checks: dict, components: dict) -> None:
    for name, check in checks.items():
        try:
            components[name] = check(components)
        except Exception as exc:  # a health probe reports failures, it never raises them
            components[name] = {"status": UNHEALTHY, "error": f"{type(exc).__name__}: {exc}"[:300]}


def refresh_chain_health() -> dict:
    """Ask the node (head, paused, identity) and leave the answer in the cache for the web process.
    Run by the worker (bookme.tasks.refresh_chain_health)."""
    components: dict[str, dict] = {}
    _run(CHAIN_CHECKS, components)
    entry = {"checked_at": time.time(), "components": components}
    # Kept past HEALTH_CHAIN_MAX_AGE so that staff still see the last answer while it is "unknown".
    cache.set(CHAIN_HEALTH_CACHE_KEY, entry, timeout=10 * int(settings.HEALTH_CHAIN_MAX_AGE.total_seconds()))
    return entry


def cached_chain_components() -> dict[str, dict]:
    """The chain part as the worker last left it; "unknown" when missing, unreadable or stale."""
    try:
        entry = cache.get(CHAIN_HEALTH_CACHE_KEY)
    except Exception as exc:  # Redis down: check_redis reports it
        log.debug("chain health not read from the cache: %s", exc)
        entry = None
    if entry is None:
        why = "the worker has not checked the chain yet (or the cache is unreachable)"
        return {name: {"status": UNKNOWN, "error": why} for name in CHAIN_CHECKS}
    age = max(0, int(time.time() - entry["checked_at"]))
    checked_at = datetime.fromtimestamp(entry["checked_at"], tz=UTC).isoformat()
    checked = {"checked_at": checked_at, "checked_age_seconds": age}
    if age > settings.HEALTH_CHAIN_MAX_AGE.total_seconds():
        why = (f"last checked {age} s ago by the worker (every {settings.HEALTH_CHAIN_REFRESH_SECONDS:g} s "
               "when it runs): is the worker or beat down?")
        return {name: {"status": UNKNOWN, "error": why, "last_known": result, **checked}
                for name, result in entry["components"].items()}
    return {name: {**result, **checked} for name, result in entry["components"].items()}


def collect_health() -> dict:
    """The whole report, details included (staff see it; public_health() is what others see)."""
    components: dict[str, dict] = {}
    _run(SERVICE_CHECKS, components)
    components.update(cached_chain_components())
    _run(SYNC_CHECKS, components)
    overall = HEALTHY
    for name, result in components.items():
        if result["status"] == UNHEALTHY and name in CRITICAL:
            overall = UNHEALTHY
            break
        if result["status"] != HEALTHY:
            overall = DEGRADED
    return {"status": overall, "components": components}


def public_health(report: dict) -> dict:
    """The state of each part and nothing else: no names, reasons, figures or error texts."""
    return {
        "status": report["status"],
        "components": {name: {"status": result["status"]} for name, result in report["components"].items()},
    }
