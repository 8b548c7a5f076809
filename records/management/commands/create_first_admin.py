"""Create the first admin account when there is none, and say where to log in.

Reads DJANGO_SUPERUSER_USERNAME, DJANGO_SUPERUSER_EMAIL and DJANGO_SUPERUSER_PASSWORD when set
(as Django's createsuperuser does); otherwise the username is "admin", a random password is
generated and printed once, and the email address is asked for when a person is at the
terminal. The address matters: alerts about failing integrations and admin notifications go
there. The login address is the one gunicorn really listens on (WEB_BIND).
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from servicedesk.configuration import web_url

EMAIL_PROMPT = (
    "Email address of the first admin (alerts about failing integrations go there; Enter to skip): "
)
NO_ADDRESS_WARNING = (
    "The admin has no email address: alerts and admin notifications reach nobody until one "
    "is added (every page says so to admins)."
)


def checked_email(value: str) -> str:
    """The address, trimmed; ValidationError with a message saying what is wrong."""
    address = value.strip()
    if address:
        validate_email(address)
    return address


class Command(BaseCommand):
    help = "Create the first admin account if no admin exists yet, and say where to log in."
    # Tests hand in a terminal of their own.
    stealth_options = ("stdin",)

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--url",
            default="",
            help="Where the desk answers (printed); default: from WEB_BIND (127.0.0.1:8000).",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Never ask for the email address, even at a terminal.",
        )

    def handle(self, *args: Any, url: str, interactive: bool = True, **options: Any) -> None:
        self.stdin: TextIO = options.get("stdin") or sys.stdin
        self.interactive = interactive and self.stdin.isatty()
        User = get_user_model()
        login_url = (url or web_url(settings.WEB_BIND)).rstrip("/") + "/login/"
        existing = User.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
        if existing is not None:
            self.stdout.write(
                f"Log in at {login_url} as an existing admin (e.g. {existing.username}). "
                f"Forgot the password? python manage.py changepassword {existing.username}"
            )
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        email = self.email_from_environment_or_terminal()
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        banner = "=" * 64
        self.stdout.write(banner)
        self.stdout.write(self.style.SUCCESS(f"Created the first admin account: {username}"))
        self.stdout.write(f"Log in at {login_url}")
        if generated:
            self.stdout.write(f"  username: {username}\n  password: {password}")
            self.stdout.write(
                "This password is shown once. Change it after logging in, or set "
                "DJANGO_SUPERUSER_PASSWORD before the first start."
            )
        if email:
            self.stdout.write(f"  email: {email}")
        else:
            self.stdout.write(self.style.WARNING(NO_ADDRESS_WARNING))
        self.stdout.write(banner)

    def email_from_environment_or_terminal(self) -> str:
        """DJANGO_SUPERUSER_EMAIL when set (refused when it is not an address), else asked
        for at a terminal until it is an address or left empty."""
        configured = os.environ.get("DJANGO_SUPERUSER_EMAIL")
        if configured is not None and configured.strip():
            try:
                return checked_email(configured)
            except ValidationError:
                raise CommandError(
                    f"DJANGO_SUPERUSER_EMAIL={configured!r} is not an email address: set it to "
                    "the first admin's address, e.g. admin@example.com, or unset it."
                ) from None
        if not self.interactive:
            return ""
        while True:
            self.stdout.write(EMAIL_PROMPT, ending="")
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:  # end of input: nobody is typing any more
                return ""
            try:
                return checked_email(line)
            except ValidationError:
                self.stderr.write(
                    f"{line.strip()!r} is not an email address (e.g. you@example.com); "
                    "type it again, or press Enter to skip."
                )
