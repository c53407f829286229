"""The indexer hands its events to the consumer the app above registers (chain_events.consumers)."""
from __future__ import annotations

import pytest

from chain_events import consumers
from escrow.chain_consumer import BookingConsumer
from escrow.models import StatusSource


def test_escrow_registers_the_booking_consumer_when_django_starts():
    consumer = consumers.get_consumer()
    assert isinstance(consumer, BookingConsumer) and consumer.status_source == StatusSource.CHAIN


def test_without_a_registered_consumer_the_indexer_says_so(monkeypatch):
    monkeypatch.setattr(consumers, "_consumer", None)
    with pytest.raises(RuntimeError, match="no chain event consumer is registered"):
        consumers.get_consumer()
