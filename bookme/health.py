"""System health: what each dependency says, folded into healthy / degraded / unhealthy."""
from __future__ import annotations

import time

from django.core.cache import cache
from django.db import connection

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"status": HEALTHY}


def check_redis() -> dict:
    key = "health:ping"
    cache.set(key, "1", 10)
    if cache.get(key) != "1":
        return {"status": UNHEALTHY, "error": "cache round trip failed"}
    return {"status": HEALTHY}


def check_rpc() -> dict:
    from chain_events.rpc import get_rpc_client

    client = get_rpc_client()
    block = client.call("eth_getBlockByNumber", ["latest", False])
    head = int(block["number"], 16)
    age = max(0, int(time.time()) - int(block["timestamp"], 16))
    from django.conf import settings

    status = HEALTHY if age <= settings.HEALTH_HEAD_MAX_AGE.total_seconds() else DEGRADED
    return {"status": status, "head_block": head, "head_age_seconds": age}


CHECKS = {"database": check_database, "redis": check_redis, "rpc": check_rpc}
# A dependency whose failure makes the service unusable; others only degrade it.
CRITICAL = {"database"}


def collect_health() -> dict:
    components = {}
    for name, check in CHECKS.items():
        try:
            components[name] = check()
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
