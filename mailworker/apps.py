from django.apps import AppConfig


class MailworkerConfig(AppConfig):
    name = "mailworker"
    verbose_name = "Mail engine"

    def ready(self) -> None:
        # Connect the receivers of records' domain events (notifications, replies), and of
        # saved integrations (a Microsoft 365 (Graph) one subscribes to push), and of
        # account emails (invitations, password reset links).
        from mailworker import account_emails, graph_signals, notifications  # noqa: F401
