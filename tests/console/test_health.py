"""/api/health/ for each component state: database, Redis, RPC (head age), contract paused, sync lag.

healthy and degraded answer 200, unhealthy (the database is the critical component) 503.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from chain_events.models import SyncCursor

pytestmark = pytest.mark.django_db


def health():
    response = Client().get("/api/health/")
    return response.status_code, response.json()


def cursor_at(block: int, *, scanned_ago: timedelta = timedelta(seconds=1), **fields) -> SyncCursor:
    return SyncCursor.objects.create(
        chain_id=settings.CHAIN_ID, contract_address=settings.ESCROW_CONTRACT_ADDRESS.lower(), last_block=block,
        head_block=block, last_scan_at=timezone.now() - scanned_ago, **fields,
    )


@pytest.fixture
def fresh_chain(chain_settings):
    chain_settings.mine()  # a head younger than HEALTH_HEAD_MAX_AGE
    return chain_settings


@pytest.mark.chain
def test_everything_healthy(fresh_chain):
    cursor_at(fresh_chain.block_number())
    status, body = health()
    assert status == 200
    assert body["status"] == "healthy", body
    components = body["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "database": "healthy", "redis": "healthy", "rpc": "healthy", "contract": "healthy", "sync": "healthy",
    }
    assert components["contract"]["paused"] is False
    assert components["sync"]["lag_blocks"] == 0 and components["sync"]["halted"] is False


@pytest.mark.chain
def test_paused_contract_degrades_and_says_who_and_why(fresh_chain):
    from reconciliation.operations import pause_contract

    pause_contract(actor="staff:olivia", reason="suspicious withdrawals")
    cursor_at(fresh_chain.block_number())
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    contract = body["components"]["contract"]
    assert contract["status"] == "degraded" and contract["paused"] is True
    assert contract["last_pause_record"]["actor"] == "staff:olivia"
    assert contract["last_pause_record"]["reason"] == "suspicious withdrawals"


@pytest.mark.chain
def test_sync_lag_over_the_limit_degrades(fresh_chain):
    fresh_chain.mine(20)
    cursor_at(fresh_chain.block_number() - 20)
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    assert body["components"]["sync"]["status"] == "degraded"
    assert body["components"]["sync"]["lag_blocks"] == 20


@pytest.mark.chain
def test_sync_lag_within_the_limit_is_healthy(fresh_chain):
    fresh_chain.mine(5)
    cursor_at(fresh_chain.block_number() - 5)
    assert health()[1]["components"]["sync"]["status"] == "healthy"


@pytest.mark.chain
def test_a_stale_last_scan_degrades(fresh_chain):
    cursor_at(fresh_chain.block_number(), scanned_ago=timedelta(minutes=10))
    sync = health()[1]["components"]["sync"]
    assert sync["status"] == "degraded" and sync["last_scan_age_seconds"] >= 600


@pytest.mark.chain
def test_a_halted_scanner_makes_sync_unhealthy_but_the_service_stays_up(fresh_chain):
    cursor_at(fresh_chain.block_number(), halted=True, halt_reason="reorg deeper than the window")
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    assert body["components"]["sync"]["status"] == "unhealthy"
    assert "reorg deeper" in body["components"]["sync"]["error"]


@pytest.mark.chain
def test_a_failing_scanner_degrades_sync_and_says_why(fresh_chain):
    cursor_at(fresh_chain.block_number(), last_error="DataError: injected handler failure",
              last_error_at=timezone.now())
    sync = health()[1]["components"]["sync"]
    assert sync["status"] == "degraded" and sync["last_error"] == "DataError"  # public: the kind only


def test_before_the_first_scan_sync_is_degraded(chain_settings):
    sync = health()[1]["components"]["sync"]
    assert sync["status"] == "degraded" and "not run yet" in sync["error"]


@pytest.mark.chain
def test_an_old_head_block_degrades_rpc(fresh_chain, settings):
    settings.HEALTH_HEAD_MAX_AGE = timedelta(seconds=-1)  # every head is older than that
    rpc = health()[1]["components"]["rpc"]
    assert rpc["status"] == "degraded" and rpc["head_block"] == fresh_chain.block_number()


def test_rpc_down_degrades_and_skips_the_contract_read(settings):
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]  # discard port: nothing listens
    cursor_at(100)
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    components = body["components"]
    assert components["rpc"]["status"] == "unhealthy"
    assert components["contract"]["status"] == "unhealthy" and "RPC unavailable" in components["contract"]["error"]
    assert components["sync"]["lag_blocks"] == 0  # from the head seen at the last scan


def test_redis_down_degrades(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:9/0"}}
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    assert body["components"]["redis"]["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "healthy"


@pytest.mark.django_db(transaction=True)
def test_database_down_is_unhealthy_503():
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT="9")  # nothing listens there
    try:
        status, body = health()
    finally:
        connection.close()
        connection.settings_dict.update(HOST=saved["HOST"], PORT=saved["PORT"])
    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "unhealthy"
