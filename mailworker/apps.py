from django.apps import AppConfig


class MailworkerConfig(AppConfig):
    name = "mailworker"
    verbose_name = "Mail engine"

    def ready(self) -> None:
        # Connect the receivers of records' domain events (notifications, replies), and of
        # saved integrations (a Microsoft 365 (Graph) one subscribes to push).
        from mailworker import graph_signals, notifications  # noqa: F401
