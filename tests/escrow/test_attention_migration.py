"""Migration 0008 carries the attention lines of Booking.attention_reason over to AttentionItem rows."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("escrow", "0007_signature_nonce_fillfactor")]
AFTER = [("escrow", "0008_attention_items")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_open_acknowledged_and_flag_lines_become_items():
    old_apps = _migrate(BEFORE)
    try:
        Booking = old_apps.get_model("escrow", "Booking")
        when = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
        booking = Booking.objects.create(
            chain_booking_id="0x" + "ab" * 32, customer_address="0x" + "11" * 20, provider_address="0x" + "22" * 20,
            amount=100, platform_fee_rate=1000, scheduled_at=when, needs_attention=True,
            attention_reason="\n".join([
                "[acknowledged] chain: second BookingCreatedAndPaid in tx 0x01 ignored — acknowledged by "
                "staff:olivia at 2026-11-23 10:00:00 UTC: agreed with the customer",
                "chain payment 0x02 differs from the booking: amount chain=100 db=99",
                "reconciliation: database says PAID, chain shows NONE at block 9",
            ]),
        )
        new_apps = _migrate(AFTER)
        items = list(new_apps.get_model("escrow", "AttentionItem").objects.filter(booking_id=booking.pk).order_by("id"))
        assert [(i.kind, i.reason, i.acknowledged_by, i.acknowledged_why, i.acknowledged_at is not None)
                for i in items] == [
            ("CHAIN_ANOMALY", "chain: second BookingCreatedAndPaid in tx 0x01 ignored", "staff:olivia",
             "agreed with the customer", True),
            ("CHAIN_MISMATCH", "chain payment 0x02 differs from the booking: amount chain=100 db=99", "", "", False),
            ("RECONCILIATION", "database says PAID, chain shows NONE at block 9", "", "", False),
        ]
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
