"""Account emails (an invitation, a password reset link): the mail engine's answer to
records' account_email_requested. They go out like every email of the desk: an outbox row
through the sending integration for system emails, logged and retried there."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.utils import timezone

from mailworker.models import OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.outbound.texts import render_subject, render_text
from records import signals

logger = logging.getLogger(__name__)
Kind = OutboxEmail.Kind
KINDS = {"invitation": Kind.INVITATION, "password_reset": Kind.PASSWORD_RESET}
# Anyone may ask for a reset link for any address, and staff addresses are not capped like
# outsiders' (mailworker.outbound.queue): this keeps the form from mail-bombing an agent.
PASSWORD_RESET_EMAILS_PER_HOUR = 5


def _reset_emails_in_the_last_hour(address: str) -> int:
    since = timezone.now() - timedelta(hours=1)
    return OutboxEmail.objects.filter(
        kind=Kind.PASSWORD_RESET, recipient=address.strip().lower(), created_at__gte=since
    ).count()


@receiver(signals.account_email_requested)
def on_account_email_requested(
    sender, user, kind: str, link: str, invited_by=None, roles: str = "", **kwargs
) -> None:
    outbox_kind = KINDS[kind]
    if (
        outbox_kind == Kind.PASSWORD_RESET
        and _reset_emails_in_the_last_hour(user.email) >= PASSWORD_RESET_EMAILS_PER_HOUR
    ):
        logger.warning("password reset: not sending another link to %s this hour", user.email)
        return
    context = {
        "user": user,
        "link": link,
        "invited_by": invited_by,
        "roles": roles,
        "valid_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
    }
    text = render_text(f"emails/{kind}.txt", context)
    queue_email(
        kind=outbox_kind,
        to=[user.email],
        subject=render_subject(f"emails/{kind}.subject.txt", context),
        text=text,
        html=render_to_string("emails/base.html", {"text": text}),
        automatic=True,
    )
