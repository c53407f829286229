"""The source of EIP-712 authorization nonces: a PostgreSQL sequence.

`nextval` never hands out the same value twice, across connections, processes and restarts
(it is not rolled back with a transaction, so gaps are possible and harmless). The unique
constraint on SignatureNonce.nonce stays as the second line of defence.
"""
from django.db import migrations

SEQUENCE = "escrow_signature_nonce_seq"


class Migration(migrations.Migration):
    dependencies = [("escrow", "0002_wallet_token")]

    operations = [
        migrations.RunSQL(
            sql=f"CREATE SEQUENCE {SEQUENCE} AS bigint START WITH 1 INCREMENT BY 1 NO CYCLE",
            reverse_sql=f"DROP SEQUENCE {SEQUENCE}",
        ),
    ]
