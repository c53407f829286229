"""Drop the `varchar_pattern_ops` twins of escrow_booking's CharField indexes.

On PostgreSQL Django adds, next to the plain btree of every indexed/unique CharField, a
second `<name>_like` index with `varchar_pattern_ops`, which serves only case-sensitive
`LIKE 'prefix%'` (`__startswith`) queries. Nothing filters bookings that way (lookups are
exact, and the admin's search uses UPPER(...) comparisons, which neither index serves), yet
every chain-sync UPDATE of a booking (status, tx hashes: not a HOT update) writes a new
entry into each of the 8 of them: about a quarter of the cost of moving 10,000 bookings to
PAID during catch-up. The plain indexes (and the unique constraints) stay.

Django does not model these indexes, so the migration state is unchanged; the reverse
creates them again under the names Django gives them.
"""
from django.db import migrations

LIKE_COLUMNS = (
    "chain_booking_id",
    "customer_address",
    "provider_address",
    "inviter_address",
    "status",
    "payment_tx_hash",
    "completion_tx_hash",
    "cancellation_tx_hash",
)


def _like_indexes(schema_editor, model):
    table = model._meta.db_table
    return [(column, schema_editor._create_index_name(table, [column], suffix="_like")) for column in LIKE_COLUMNS]


def drop_like_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("escrow", "Booking")
    for _, name in _like_indexes(schema_editor, model):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def create_like_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("escrow", "Booking")
    table = schema_editor.quote_name(model._meta.db_table)
    for column, name in _like_indexes(schema_editor, model):
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {schema_editor.quote_name(name)} "
            f"ON {table} ({schema_editor.quote_name(column)} varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [("escrow", "0003_signature_nonce_sequence")]

    operations = [migrations.RunPython(drop_like_indexes, create_like_indexes)]
