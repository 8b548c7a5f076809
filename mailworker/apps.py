from django.apps import AppConfig


class MailworkerConfig(AppConfig):
    name = "mailworker"
    verbose_name = "Mail engine"

    def ready(self) -> None:
        # Connect the receivers of records' domain events (notifications, replies), and of
        # saved integrations (a Microsoft 365 (Graph) one subscribes to push), and of
        # account emails (invitations, password reset links).
        from django.conf import settings
        from django.db.models.signals import post_save

        from mailworker import account_emails, graph_signals, notifications  # noqa: F401
        from mailworker.admin_banner import forget_admin_banner

        # An admin who has just added an email address sees the banner about it go at once.
        post_save.connect(
            forget_admin_banner, sender=settings.AUTH_USER_MODEL, dispatch_uid="admin-banner"
        )
