from django.apps import AppConfig


class MailworkerConfig(AppConfig):
    name = "mailworker"
    verbose_name = "Mail engine"
