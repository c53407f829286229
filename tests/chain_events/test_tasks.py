"""The Celery tasks are thin and safe to deliver twice (called in-process here; the real
worker + beat run is tests/chain_events/test_celery_integration.py)."""
from __future__ import annotations

import pytest

from chain_events import tasks
from chain_events.models import ChainEvent
from escrow.models import BookingStatus, BookingStatusChange

pytestmark = [pytest.mark.chain, pytest.mark.django_db]


def test_scan_task_delivered_twice_applies_once(flow, settings):
    settings.CHAIN_SCAN_FOLLOW_SECONDS = 0
    booking, _ = flow.paid_booking()
    first = tasks.scan_chain()
    second = tasks.scan_chain()
    assert first["inserted"] == 1 and second["inserted"] == 0
    booking.refresh_from_db()
    assert booking.status == BookingStatus.PAID
    assert BookingStatusChange.objects.filter(source="chain").count() == 1
    assert ChainEvent.objects.count() == 1
    assert tasks.retry_failed_events() == {"attempted": 0, "processed": 0, "failed": 0, "dead_letters": 0}


def test_scan_task_with_every_endpoint_down_reports_instead_of_raising(flow, settings):
    settings.CHAIN_RPC_URLS = ["http://127.0.0.1:9"]
    settings.RPC_RETRIES = 0
    result = tasks.scan_chain()
    assert "all RPC endpoints failed" in result["error"]


def test_tasks_are_late_acked_and_named_for_beat():
    assert tasks.scan_chain.acks_late and tasks.retry_failed_events.acks_late
    assert tasks.scan_chain.name == settings_task("scan-chain")
    assert tasks.retry_failed_events.name == settings_task("retry-failed-chain-events")


def settings_task(entry: str) -> str:
    from django.conf import settings

    return settings.CELERY_BEAT_SCHEDULE[entry]["task"]
