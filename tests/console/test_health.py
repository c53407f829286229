"""/api/health/ for each component state: database, Redis, RPC (head age), contract paused, chain
identity, sync lag.

healthy and degraded answer 200, unhealthy (the database is the critical component) 503. The chain
part is read by the worker (bookme.tasks.refresh_chain_health, run here in the test's process) into
the cache; a request reads only the cache. The public answer is the status of each part; staff
signed in to the console get the details.
"""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from bookme.health import refresh_chain_health
from bookme.tasks import refresh_chain_health as refresh_chain_health_task
from chain_events.models import SyncCursor
from tests.rpc_proxy import RpcProxy

pytestmark = pytest.mark.django_db

COMPONENTS = {"database", "redis", "rpc", "contract", "identity", "sync"}


@pytest.fixture
def staff(django_user_model):
    client = Client()
    client.force_login(django_user_model.objects.create_user("hana", password="staff-pass-123", is_staff=True))
    return client


@pytest.fixture
def health(staff):
    """GET /api/health/ as staff (the details): (status code, body)."""

    def get():
        response = staff.get("/api/health/")
        return response.status_code, response.json()

    return get


def public_health():
    response = Client().get("/api/health/")
    return response.status_code, response.json()


def cursor_at(block: int, *, scanned_ago: timedelta = timedelta(seconds=1), **fields) -> SyncCursor:
    return SyncCursor.objects.create(
        chain_id=settings.CHAIN_ID, contract_address=settings.ESCROW_CONTRACT_ADDRESS.lower(), last_block=block,
        head_block=block, last_scan_at=timezone.now() - scanned_ago, **fields,
    )


@pytest.fixture
def fresh_chain(chain_settings):
    # A head younger than HEALTH_HEAD_MAX_AGE. Mining alone is not enough: a test earlier in the
    # session may have set a block timestamp in the past, and anvil keeps that clock offset
    # across evm_revert, so the next block would be minutes old.
    chain_settings.set_next_timestamp(max(int(time.time()), chain_settings.latest_timestamp() + 1))
    chain_settings.mine()
    return chain_settings


@pytest.mark.chain
def test_everything_healthy(fresh_chain, health):
    cursor_at(fresh_chain.block_number())
    refresh_chain_health_task()  # what beat has the worker do every HEALTH_CHAIN_REFRESH_SECONDS
    status, body = health()
    assert status == 200
    assert body["status"] == "healthy", body
    components = body["components"]
    assert {name: c["status"] for name, c in components.items()} == dict.fromkeys(COMPONENTS, "healthy")
    assert components["contract"]["paused"] is False
    assert components["rpc"]["head_block"] == fresh_chain.block_number()
    assert components["rpc"]["checked_age_seconds"] <= 5
    assert components["sync"]["lag_blocks"] == 0 and components["sync"]["halted"] is False


@pytest.mark.chain
def test_paused_contract_degrades_and_staff_see_who_and_why(fresh_chain, health):
    from reconciliation.operations import pause_contract

    pause_contract(actor="staff:olivia", reason="suspicious withdrawals")
    cursor_at(fresh_chain.block_number())
    refresh_chain_health()
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    contract = body["components"]["contract"]
    assert contract["status"] == "degraded" and contract["paused"] is True
    assert contract["last_pause_record"]["actor"] == "staff:olivia"
    assert contract["last_pause_record"]["reason"] == "suspicious withdrawals"


@pytest.mark.chain
def test_the_public_sees_the_state_of_each_part_and_nothing_else(fresh_chain, settings):
    """No staff name, no free-text reason, no exception text (database host, port, user), no figures."""
    from reconciliation.operations import pause_contract

    pause_contract(actor="staff:olivia", reason="suspicious withdrawals")
    cursor_at(fresh_chain.block_number(), halted=True, halt_reason="reorg deeper than the window at db-7.internal")
    refresh_chain_health()
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://bookme:hunter2@127.0.0.1:9/0"}}  # an error naming a host
    status, body = public_health()
    assert status == 200
    assert body == {
        "status": "degraded",
        "components": {
            "database": {"status": "healthy"}, "redis": {"status": "unhealthy"}, "rpc": {"status": "unknown"},
            "contract": {"status": "unknown"}, "identity": {"status": "unknown"}, "sync": {"status": "unhealthy"},
        },
    }


@pytest.mark.chain
def test_the_public_does_not_see_who_paused_or_why(fresh_chain):
    from reconciliation.operations import pause_contract

    pause_contract(actor="staff:olivia", reason="suspicious withdrawals")
    cursor_at(fresh_chain.block_number())
    refresh_chain_health()
    status, body = public_health()
    assert (status, body["components"]["contract"]) == (200, {"status": "degraded"})
    assert "olivia" not in str(body) and "suspicious" not in str(body)


@pytest.mark.chain
def test_a_request_never_asks_the_node(fresh_chain, settings):
    """A loop of requests on health costs no RPC quota: the worker's last answer is served."""
    cursor_at(fresh_chain.block_number())
    with RpcProxy(fresh_chain.url) as node:
        settings.CHAIN_RPC_URLS = [node.url]
        refresh_chain_health()
        asked_by_the_worker = node.requests
        assert asked_by_the_worker > 0
        answers = [public_health() for _ in range(5)]
        assert node.requests == asked_by_the_worker
    assert [status for status, _ in answers] == [200] * 5
    assert all(body["components"]["rpc"] == {"status": "healthy"} for _, body in answers)


@pytest.mark.chain
def test_a_stale_chain_check_is_unknown_and_degrades(fresh_chain, settings, health):
    cursor_at(fresh_chain.block_number())
    refresh_chain_health()
    settings.HEALTH_CHAIN_MAX_AGE = timedelta(seconds=-1)  # every check is older than that
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    for name in ("rpc", "contract", "identity"):
        component = body["components"][name]
        assert component["status"] == "unknown" and "is the worker or beat down?" in component["error"]
        assert component["last_known"]["status"] == "healthy"  # staff still see the last answer


def test_before_the_first_chain_check_the_chain_part_is_unknown(chain_settings, health):
    components = health()[1]["components"]
    assert components["rpc"]["status"] == "unknown" and "has not checked the chain yet" in components["rpc"]["error"]


@pytest.mark.chain
def test_sync_lag_over_the_limit_degrades(fresh_chain, health):
    fresh_chain.mine(20)
    cursor_at(fresh_chain.block_number() - 20)
    refresh_chain_health()
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    assert body["components"]["sync"]["status"] == "degraded"
    assert body["components"]["sync"]["lag_blocks"] == 20


@pytest.mark.chain
def test_sync_lag_within_the_limit_is_healthy(fresh_chain, health):
    fresh_chain.mine(5)
    cursor_at(fresh_chain.block_number() - 5)
    refresh_chain_health()
    assert health()[1]["components"]["sync"]["status"] == "healthy"


@pytest.mark.chain
def test_a_stale_last_scan_degrades(fresh_chain, health):
    cursor_at(fresh_chain.block_number(), scanned_ago=timedelta(minutes=10))
    sync = health()[1]["components"]["sync"]
    assert sync["status"] == "degraded" and sync["last_scan_age_seconds"] >= 600


@pytest.mark.chain
def test_a_halted_scanner_makes_sync_unhealthy_but_the_service_stays_up(fresh_chain, health):
    cursor_at(fresh_chain.block_number(), halted=True, halt_reason="reorg deeper than the window")
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    assert body["components"]["sync"]["status"] == "unhealthy"
    assert "reorg deeper" in body["components"]["sync"]["error"]


@pytest.mark.chain
def test_a_failing_scanner_degrades_sync_and_says_why(fresh_chain, health):
    cursor_at(fresh_chain.block_number(), last_error="DataError: injected handler failure",
              last_error_at=timezone.now())
    sync = health()[1]["components"]["sync"]
    assert sync["status"] == "degraded" and sync["last_error"] == "DataError"


def test_before_the_first_scan_sync_is_degraded(chain_settings, health):
    sync = health()[1]["components"]["sync"]
    assert sync["status"] == "degraded" and "not run yet" in sync["error"]


@pytest.mark.chain
def test_an_old_head_block_degrades_rpc(fresh_chain, settings, health):
    settings.HEALTH_HEAD_MAX_AGE = timedelta(seconds=-1)  # every head is older than that
    refresh_chain_health()
    rpc = health()[1]["components"]["rpc"]
    assert rpc["status"] == "degraded" and rpc["head_block"] == fresh_chain.block_number()


def test_rpc_down_degrades_and_skips_the_contract_read(settings, health):
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]  # discard port: nothing listens
    cursor_at(100)
    refresh_chain_health()
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    components = body["components"]
    assert components["rpc"]["status"] == "unhealthy"
    assert components["contract"]["status"] == "unhealthy" and "RPC unavailable" in components["contract"]["error"]
    assert components["sync"]["lag_blocks"] == 0  # from the head seen at the last scan


def test_redis_down_degrades(settings, health):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:9/0"}}
    status, body = health()
    assert status == 200 and body["status"] == "degraded"
    assert body["components"]["redis"]["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "healthy"
    assert body["components"]["rpc"]["status"] == "unknown"  # its cache entry cannot be read either


@pytest.mark.django_db(transaction=True)
def test_database_down_is_unhealthy_503_and_the_public_sees_no_error_text():
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT="9")  # nothing listens there
    try:
        status, body = public_health()
    finally:
        connection.close()
        connection.settings_dict.update(HOST=saved["HOST"], PORT=saved["PORT"])
    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["components"]["database"] == {"status": "unhealthy"}  # not the driver's text naming host and port
    assert "127.0.0.1" not in str(body) and "port" not in str(body).lower()


def test_health_is_throttled_per_client_address(db, settings):
    settings.HEALTH_THROTTLE_RATE = "3/minute"
    client = Client()
    assert [client.get("/api/health/").status_code for _ in range(4)] == [200, 200, 200, 429]
    refused = client.get("/api/health/")
    assert refused.json()["detail"] and int(refused["Retry-After"]) > 0
    assert Client(REMOTE_ADDR="10.0.0.7").get("/api/health/").status_code == 200
    # Liveness touches nothing, not even the throttle's Redis.
    assert {client.get("/api/health/live/").status_code for _ in range(5)} == {200}


def test_the_worker_refreshes_the_chain_part_on_a_schedule():
    from bookme.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["refresh-chain-health"]
    assert entry["task"] == "bookme.refresh_chain_health"
    assert entry["schedule"] == settings.HEALTH_CHAIN_REFRESH_SECONDS
    app.loader.import_default_modules()
    assert "bookme.refresh_chain_health" in app.tasks
