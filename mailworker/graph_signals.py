"""A saved Microsoft 365 (Graph) integration asks for its push subscription after the
commit (a worker talks to Graph; the admin's request does not wait for it). Only when the
desk has a public HTTPS address; beat's periodic check covers anything missed here."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from integrations.models import EmailIntegration
from mailworker.graph_push import KEEP_TASK, notification_url, queue_task


@receiver(post_save, sender=EmailIntegration, dispatch_uid="graph_subscription_on_save")
def subscribe_after_save(sender: Any, instance: EmailIntegration, **kwargs: Any) -> None:
    if not (instance.uses_graph and instance.incoming_enabled and notification_url()):
        return
    integration_id = instance.pk
    transaction.on_commit(lambda: queue_task(KEEP_TASK, integration_id))
