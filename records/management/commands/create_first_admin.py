"""Create the first admin account when there is none, and say how to log in.

Reads DJANGO_SUPERUSER_USERNAME, DJANGO_SUPERUSER_EMAIL and DJANGO_SUPERUSER_PASSWORD when set
(as Django's createsuperuser does); otherwise the username is "admin" and a random password is
generated and printed once.
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the first admin account if no admin exists yet."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000/", help="Where the desk answers (printed)."
        )

    def handle(self, *args, url: str, **options) -> None:
        User = get_user_model()
        login_url = url.rstrip("/") + "/login/"
        existing = User.objects.filter(is_superuser=True, is_active=True).first()
        if existing is not None:
            self.stdout.write(
                f"Log in at {login_url} as an existing admin (e.g. {existing.username}). "
                f"Forgot the password? python manage.py changepassword {existing.username}"
            )
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
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
        self.stdout.write(banner)
