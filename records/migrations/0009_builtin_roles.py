"""The built-in roles (records/roles.py): Administrator, Agent, Read-only.

On a fresh database Django creates Permission rows only in post_migrate, after every
migration: they are created here first. RecordsConfig syncs the roles again after every
migrate, so permissions of models added later reach the Administrator too."""

from django.db import migrations


def create_builtin_roles(apps, schema_editor):
    from records.roles import create_all_permissions, sync_roles

    using = schema_editor.connection.alias
    create_all_permissions(apps=apps, using=using)
    sync_roles(apps=apps, using=using)


class Migration(migrations.Migration):
    dependencies = [
        ("records", "0008_email_rule_integrations_status_sender_domain"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_builtin_roles, migrations.RunPython.noop)]
