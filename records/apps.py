from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RecordsConfig(AppConfig):
    name = "records"
    verbose_name = "Service records"

    def ready(self) -> None:
        from records.roles import sync_roles_after_migrate

        # The built-in roles get the permissions of models added since their migration.
        post_migrate.connect(
            sync_roles_after_migrate, sender=self, dispatch_uid="records.sync_roles"
        )
