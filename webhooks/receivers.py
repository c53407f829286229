"""What the webhooks do when the relay publishes notifications: queue a fan-out (one, however many
batches are published before it starts), nothing more (the relay must not wait on endpoints; the
beat's sweep fans out whatever a lost task missed)."""
from __future__ import annotations

from django.db import transaction

from . import tasks


def fan_out_on_publish(sender=None, **kwargs) -> None:
    transaction.on_commit(tasks.queue_fan_out, robust=True)  # a broker outage must not fail the relay
