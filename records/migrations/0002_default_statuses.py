from django.db import migrations


def create_default_statuses(apps, schema_editor):
    from records.defaults import DEFAULT_STATUSES

    Status = apps.get_model("records", "Status")
    for name, order, is_closed in DEFAULT_STATUSES:
        Status.objects.get_or_create(name=name, defaults={"order": order, "is_closed": is_closed})


class Migration(migrations.Migration):
    dependencies = [("records", "0001_initial")]

    operations = [migrations.RunPython(create_default_statuses, migrations.RunPython.noop)]
