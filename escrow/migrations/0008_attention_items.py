"""Attention reasons as rows (AttentionItem) instead of lines of Booking.attention_reason.

Existing lines are carried over: "[acknowledged] <reason> — acknowledged by <who> at <when>:
<why>" becomes an acknowledged item; "reconciliation: ..." lines become RECONCILIATION items,
"chain payment ... differs" CHAIN_MISMATCH, the other "chain: ..." lines CHAIN_ANOMALY.
"""
import django.db.models.deletion
from django.db import migrations, models

ACKNOWLEDGED_PREFIX = "[acknowledged] "
ACKNOWLEDGED_BY = " — acknowledged by "


def _kind(reason: str) -> str:
    if reason.startswith("reconciliation: "):
        return "RECONCILIATION"
    if reason.startswith("chain payment "):
        return "CHAIN_MISMATCH"
    return "CHAIN_ANOMALY"


def lines_to_items(apps, schema_editor):
    Booking = apps.get_model("escrow", "Booking")
    AttentionItem = apps.get_model("escrow", "AttentionItem")
    items = []
    for booking in Booking.objects.exclude(attention_reason="").only("id", "attention_reason", "updated_at").iterator():
        for line in booking.attention_reason.splitlines():
            if not line.strip():
                continue
            acknowledged_by = acknowledged_why = ""
            acknowledged_at = None
            if line.startswith(ACKNOWLEDGED_PREFIX):
                line, _, note = line[len(ACKNOWLEDGED_PREFIX):].partition(ACKNOWLEDGED_BY)
                who, _, why = note.partition(": ")
                acknowledged_by, acknowledged_why = who.split(" at ")[0][:200], why or note
                acknowledged_at = booking.updated_at
            kind = _kind(line)
            items.append(AttentionItem(
                booking_id=booking.id, kind=kind, reason=line.removeprefix("reconciliation: "), raised_at=booking.updated_at,
                acknowledged_at=acknowledged_at, acknowledged_by=acknowledged_by, acknowledged_why=acknowledged_why,
            ))
    AttentionItem.objects.bulk_create(items, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [("escrow", "0007_signature_nonce_fillfactor")]

    operations = [
        migrations.CreateModel(
            name="AttentionItem",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("CHAIN_MISMATCH", "Chain payment differs"), ("CHAIN_ANOMALY", "Unexpected event sequence"), ("RECONCILIATION", "Reconciliation flag")], max_length=32)),
                ("reason", models.TextField()),
                ("raised_at", models.DateTimeField()),
                ("acknowledged_at", models.DateTimeField(blank=True, null=True)),
                ("acknowledged_by", models.CharField(blank=True, default="", max_length=200)),
                ("acknowledged_why", models.TextField(blank=True, default="")),
                ("booking", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="attention_items", to="escrow.booking")),
            ],
            options={"ordering": ["raised_at", "id"], "indexes": [models.Index(fields=["booking", "kind"], name="escrow_atte_booking_4e63eb_idx")]},
        ),
        migrations.RunPython(lines_to_items, migrations.RunPython.noop),
        migrations.RemoveField(model_name="booking", name="attention_reason"),
    ]
