"""Celery entry points of the shell (listed in CELERY_IMPORTS; scheduled in CELERY_BEAT_SCHEDULE)."""
from __future__ import annotations

from celery import shared_task

from . import health


@shared_task(name="bookme.refresh_chain_health", ignore_result=True)
def refresh_chain_health() -> None:
    """The chain part of /api/health/ (RPC head, contract paused, chain identity), read by the
    worker into the cache: the web process never asks the node from a health request."""
    health.refresh_chain_health()
