"""Who hears of the desk's system alerts (an integration keeps failing, must be connected
again, a flood is held), and sending one.

An alert that reaches nobody is worse than one that reaches too many: when none of the
first choice has an email address, every active admin who has one hears of it, and the
caller learns that nobody did, so it does not count the alert as sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Q, QuerySet

from mailworker.models import OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.outbound.texts import render_email

# The admins: staff who may change email integrations, the ones who can fix what an alert
# is about (superusers hold every permission).
ADMIN_PERMISSION = "integrations.change_emailintegration"


def staff_with_permission(permission: str) -> QuerySet:
    """Active staff who hold `permission` ("app_label.codename") as Django's ModelBackend
    grants it: superusers, and users holding it themselves or through one of their groups.
    One query (subqueries, no join that repeats a user)."""
    app_label, codename = permission.split(".", 1)
    User = get_user_model()
    granted = Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    own = User.user_permissions.through.objects.filter(permission__in=granted)
    through_group = User.groups.through.objects.filter(group__permissions__in=granted)
    return User.objects.filter(is_active=True, is_staff=True).filter(
        Q(is_superuser=True)
        | Q(pk__in=own.values("user_id"))
        | Q(pk__in=through_group.values("user_id"))
    )


def superusers() -> QuerySet:
    return get_user_model().objects.filter(is_active=True, is_superuser=True)


def addresses_of(users: Iterable[Any]) -> list[str]:
    return [user.email for user in users if user.email]


def admins_with_an_address() -> list[str]:
    return addresses_of(staff_with_permission(ADMIN_PERMISSION).exclude(email="").order_by("pk"))


def alert_recipients(first_choice: QuerySet | None = None) -> list[str]:
    """The addresses of `first_choice` (default: the active superusers); when none of them
    has one, those of every active admin."""
    chosen = first_choice if first_choice is not None else superusers()
    return addresses_of(chosen.exclude(email="").order_by("pk")) or admins_with_an_address()


def queue_alert(
    *,
    template: str,
    context: dict[str, Any],
    first_choice: QuerySet | None = None,
) -> bool:
    """Queue system alert `template` (a key of outbound/email_templates.py; `context` of
    plain values). Returns whether it went to anyone: False when no admin has an email
    address (or every address is one the desk reads itself)."""
    recipients = alert_recipients(first_choice)
    if not recipients:
        return False
    texts = render_email(template, context)
    queued = queue_email(
        kind=OutboxEmail.Kind.SYSTEM_ALERT,
        to=recipients,
        subject=texts.subject,
        text=texts.text,
    )
    # Addresses the desk reads itself are dropped; a row that fails for want of a sending
    # integration still counts: it is on the outbox screen, and queueing it again at every
    # failure would only add more failed rows.
    return bool(queued.rows)
