from django.apps import AppConfig


class MailworkerConfig(AppConfig):
    name = "mailworker"
    verbose_name = "Mail engine"

    def ready(self) -> None:
        # Connect the receivers of records' domain events (notifications, replies).
        from mailworker import notifications  # noqa: F401
