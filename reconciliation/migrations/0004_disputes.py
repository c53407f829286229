# Disputes (issue 15): the Dispute model, and resolveDispute among the operator's transaction purposes.

import django.db.models.deletion
from django.db import migrations, models

import common.fields


class Migration(migrations.Migration):

    dependencies = [
        ('escrow', '0008_attention_items'),
        ('reconciliation', '0003_operator_transactions_reorgs'),
    ]

    operations = [
        migrations.AlterField(
            model_name='senttransaction',
            name='purpose',
            field=models.CharField(choices=[('emergency_cancel', 'Emergency cancel (refund)'), ('operator_complete', 'Operator completion'), ('pause', 'Pause contract'), ('unpause', 'Unpause contract'), ('nonce_fill', 'Nonce fill'), ('dispute_resolution', 'Dispute resolution'), ('other', 'Other')], max_length=32),
        ),
        migrations.CreateModel(
            name='Dispute',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('opened_by', models.CharField(help_text="the customer's address", max_length=42)),
                ('reason', models.TextField()),
                ('evidence', models.TextField(blank=True, default='', help_text="the customer's account of what happened")),
                ('links', models.JSONField(blank=True, default=list, help_text='http(s) links the customer gave as evidence')),
                ('status', models.CharField(choices=[('OPEN', 'Open: waiting for an operator'), ('DECIDED', 'Decided: the split is sent to the chain')], default='OPEN', max_length=16)),
                ('opened_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('customer_amount', common.fields.Uint256Field(blank=True, null=True)),
                ('provider_amount', common.fields.Uint256Field(blank=True, null=True)),
                ('platform_amount', common.fields.Uint256Field(blank=True, null=True)),
                ('inviter_amount', common.fields.Uint256Field(blank=True, null=True)),
                ('decided_by', models.CharField(blank=True, default='', max_length=200)),
                ('decided_at', models.DateTimeField(blank=True, null=True)),
                ('decision_reason', models.TextField(blank=True, default='')),
                ('booking', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='dispute', to='escrow.booking')),
            ],
            options={
                'ordering': ['-opened_at'],
            },
        ),
    ]
