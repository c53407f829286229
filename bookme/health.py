"""System health: what each dependency says, folded into healthy / degraded / unhealthy.

Components, checked in order (a later check may use an earlier one's result):
- database: SELECT 1. The only critical component: unhealthy here makes the whole service
  unhealthy (503); anything else only degrades it (200).
- redis: a cache round trip (Celery broker, throttles, SIWE nonces).
- rpc: the node's head block and its age (degraded when older than HEALTH_HEAD_MAX_AGE).
- contract: whether the escrow is paused (degraded while paused: payments and completions stop),
  with the last pause record (who, why, when).
- sync: the scanner cursor's lag behind the head in blocks and the age of its last scan
  (degraded beyond HEALTH_SYNC_MAX_LAG_BLOCKS / HEALTH_SYNC_MAX_SCAN_AGE or before the first
  scan; unhealthy when a deep reorg halted the scanner).
"""
from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from chain_events.models import SyncCursor
from chain_events.rpc import get_rpc_client
from reconciliation.selectors import contract_paused, last_effective_pause_record

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


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


def check_sync(components: dict | None = None) -> dict:
    cursor = SyncCursor.objects.filter(
        chain_id=settings.CHAIN_ID, contract_address=settings.ESCROW_CONTRACT_ADDRESS.lower()
    ).first()
    if cursor is None:
        return {"status": DEGRADED, "error": "the scanner has not run yet"}
    # The live head when the RPC check read one; the head seen at the last scan otherwise.
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
        # The kind of error only: this endpoint is public, and messages may name endpoints or
        # database details (staff read the whole message on the console).
        "last_error": cursor.last_error.split(":", 1)[0] or None,
        "last_error_at": cursor.last_error_at.isoformat() if cursor.last_error and cursor.last_error_at else None,
    }
    if cursor.halted:
        return {"status": UNHEALTHY, "error": f"scanner halted: {cursor.halt_reason}"[:300], **result}
    too_far = lag is None or lag > settings.HEALTH_SYNC_MAX_LAG_BLOCKS
    too_old = scan_age is None or scan_age > settings.HEALTH_SYNC_MAX_SCAN_AGE.total_seconds()
    failing = bool(cursor.last_error)
    return {"status": DEGRADED if too_far or too_old or failing else HEALTHY, **result}


CHECKS = {
    "database": check_database,
    "redis": check_redis,
    "rpc": check_rpc,
    "contract": check_contract,
    "sync": check_sync,
}
# A dependency whose failure makes the service unusable; others only degrade it.
CRITICAL = {"database"}


def collect_health() -> dict:
    components: dict[str, dict] = {}
    for name, check in CHECKS.items():
        try:
            components[name] = check(components)
        except Exception as exc:  # a health probe reports failures, it never raises them
            components[name] = {"status": UNHEALTHY, "error": f"{type(exc).__name__}: {exc}"[:300]}
    overall = HEALTHY
    for name, result in components.items():
        if result["status"] == UNHEALTHY:
            if name in CRITICAL:
                overall = UNHEALTHY
                break
            overall = DEGRADED
        elif result["status"] == DEGRADED and overall == HEALTHY:
            overall = DEGRADED
    return {"status": overall, "components": components}
