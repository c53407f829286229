"""The "operators" group: its members (staff) may run the console's actions (bookme/console.py).

Other staff only read. The group needs no model permissions: the console checks membership.
"""
from django.db import migrations

OPERATORS_GROUP = "operators"  # common.console.OPERATORS_GROUP (a migration keeps its own copy)


def create_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.get_or_create(name=OPERATORS_GROUP)


def remove_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name=OPERATORS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("reconciliation", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
