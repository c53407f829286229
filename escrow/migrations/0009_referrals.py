"""Server-side referrals (issue 15): invite codes and the wallets bound to their inviters."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('escrow', '0008_attention_items'),
    ]

    operations = [
        migrations.CreateModel(
            name='InviteCode',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('code', models.CharField(max_length=16, unique=True)),
                ('inviter_address', models.CharField(db_index=True, help_text='EIP-55 checksummed', max_length=42)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['created_at', 'id'],
            },
        ),
        migrations.CreateModel(
            name='Referral',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('invitee_address', models.CharField(help_text='EIP-55 checksummed', max_length=42, unique=True)),
                ('redeemed_at', models.DateTimeField(auto_now_add=True)),
                ('invite_code', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='referrals', to='escrow.invitecode')),
            ],
            options={
                'ordering': ['redeemed_at', 'id'],
            },
        ),
    ]
