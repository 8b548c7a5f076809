"""How integrations fare: failures in a row, and one alert to admins when they keep failing.

Admins hear about a failing integration once per streak of failures, not once per poll, and
the streak ends by itself with the next success.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.models import OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.outbound.texts import render_subject, render_text


def note_success(*, integration: EmailIntegration) -> None:
    EmailIntegration.objects.filter(pk=integration.pk).update(
        consecutive_failures=0, failure_alert_sent_at=None
    )


def note_failure(*, integration: EmailIntegration, direction: str, error: str) -> bool:
    """Count a failure; alert admins once when the streak reaches the threshold. Returns
    whether an alert was queued."""
    with transaction.atomic():
        EmailIntegration.objects.filter(pk=integration.pk).update(
            consecutive_failures=F("consecutive_failures") + 1
        )
        current = EmailIntegration.objects.select_for_update().get(pk=integration.pk)
        if (
            current.consecutive_failures < settings.INTEGRATION_FAILURES_BEFORE_ALERT
            or current.failure_alert_sent_at is not None
        ):
            return False
        current.failure_alert_sent_at = timezone.now()
        current.save(update_fields=["failure_alert_sent_at"])
        admins = (
            get_user_model().objects.filter(is_active=True, is_superuser=True).exclude(email="")
        )
        context = {"integration": current, "direction": direction, "error": error}
        queue_email(
            kind=OutboxEmail.Kind.SYSTEM_ALERT,
            to=[admin.email for admin in admins],
            subject=render_subject("emails/integration_failing.subject.txt", context),
            text=render_text("emails/integration_failing.txt", context),
        )
    return True


def notify_needs_reconnect(*, integration: EmailIntegration, provider: str) -> bool:
    """Tell admins, once, that an OAuth 2.0 integration must be connected again. Returns
    whether the notice was queued.

    Counts as the alert of the current failure streak too (failure_alert_sent_at), so the
    passes that fail while it waits for the admin do not send a second, vaguer alert.
    """
    with transaction.atomic():
        current = EmailIntegration.objects.select_for_update().get(pk=integration.pk)
        if not current.needs_reconnect or current.needs_reconnect_notified_at is not None:
            return False
        now = timezone.now()
        EmailIntegration.objects.filter(pk=current.pk).update(
            needs_reconnect_notified_at=now, failure_alert_sent_at=now
        )
        current.needs_reconnect_notified_at = now
        admins = (
            get_user_model().objects.filter(is_active=True, is_superuser=True).exclude(email="")
        )
        context = {"integration": current, "provider": provider}
        queue_email(
            kind=OutboxEmail.Kind.SYSTEM_ALERT,
            to=[admin.email for admin in admins],
            subject=render_subject("emails/integration_needs_reconnect.subject.txt", context),
            text=render_text("emails/integration_needs_reconnect.txt", context),
        )
    integration.needs_reconnect_notified_at = current.needs_reconnect_notified_at
    return True
