"""Graph change-notification subscriptions of Microsoft 365 (Graph) integrations: created
when an integration is saved (and by beat), renewed a day before they end, recreated when
Graph removed one, dropped when the desk has no public HTTPS address any more.

A subscription to messages lives at most 4230 minutes. Creating one makes Graph call the
notification URL with a validation token first (mailworker/views_graph.py answers it).
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from integrations.models import EmailIntegration, IncomingProtocol
from mailworker.graph_push import notification_url, sha256_hex
from mailworker.mailboxes.base import MailboxError
from mailworker.mailboxes.graph import GraphMailbox
from mailworker.mailboxes.graph_client import GraphClient, GraphNotFound
from mailworker.models import GraphSubscription

logger = logging.getLogger(__name__)

# Graph's limit for mail is 4230 minutes; ask for a little less, so clocks that differ by a
# few minutes never make Graph refuse the date.
SUBSCRIPTION_LIFETIME = timedelta(minutes=4200)
RENEW_WHEN_LEFT = timedelta(hours=24)
TIMEOUT_SECONDS = 20.0


def push_integrations() -> list[EmailIntegration]:
    return [
        integration
        for integration in EmailIntegration.objects.filter(
            incoming_enabled=True, incoming_protocol=IncomingProtocol.MICROSOFT_GRAPH
        )
        if not integration.needs_reconnect
    ]


def keep_subscriptions() -> int:
    """Beat's job: every Graph integration has a live subscription to its folder while the
    desk has a public HTTPS address, and none when it does not. Returns how many are live."""
    wanted = {integration.pk: integration for integration in push_integrations()}
    url = notification_url()
    for stale in GraphSubscription.objects.exclude(integration_id__in=list(wanted) if url else []):
        _forget(stale)
    live = 0
    for integration in wanted.values() if url else []:
        try:
            if keep_subscription(integration=integration) is not None:
                live += 1
        except MailboxError as exc:
            logger.warning("integration %s: no Graph subscription: %s", integration.name, exc)
    return live


def keep_subscription(
    *, integration: EmailIntegration, renew: bool = False
) -> GraphSubscription | None:
    """Create the integration's subscription, or renew it when it ends within a day (or
    `renew`, when Graph asked for reauthorization). None without a public HTTPS address.
    Raises MailboxError when Graph refuses."""
    url = notification_url()
    if not url or not integration.uses_graph or not integration.incoming_enabled:
        return None
    current = GraphSubscription.objects.filter(integration=integration).first()
    if current is not None and current.notification_url != url:
        _forget(current)  # the desk moved: Graph must call the new address
        current = None
    if current is None:
        return _create(integration, url)
    if renew or current.expires_at - timezone.now() < RENEW_WHEN_LEFT:
        try:
            return _renew(integration, current)
        except GraphNotFound:
            logger.info("integration %s: Graph removed its subscription", integration.name)
            current.delete()
            return _create(integration, url)
    return current


def keep_one(*, integration_id: int, renew: bool = False, recreate: bool = False) -> None:
    """The task's body: logs what Graph refused instead of failing the task (beat retries)."""
    integration = EmailIntegration.objects.filter(pk=integration_id).first()
    if integration is None or integration.needs_reconnect:
        return
    try:
        if recreate:
            recreate_subscription(integration=integration)
        else:
            keep_subscription(integration=integration, renew=renew)
    except MailboxError as exc:
        logger.warning("integration %s: no Graph subscription: %s", integration.name, exc)


def recreate_subscription(*, integration: EmailIntegration) -> GraphSubscription | None:
    """Graph removed the subscription (or missed notifications): a new one."""
    GraphSubscription.objects.filter(integration=integration).delete()
    return keep_subscription(integration=integration)


def _create(integration: EmailIntegration, url: str) -> GraphSubscription:
    client_state = secrets.token_urlsafe(32)
    with GraphMailbox(integration, timeout=TIMEOUT_SECONDS) as mailbox:
        assert mailbox.client is not None
        resource = f"users/{mailbox.mailbox}/mailFolders/{mailbox.folder_id}/messages"
        answer = mailbox.client.request(
            "POST",
            f"{mailbox.client.base_url}/subscriptions",
            json={
                "changeType": "created",
                "notificationUrl": url,
                "lifecycleNotificationUrl": url,
                "resource": resource,
                "expirationDateTime": _graph_time(timezone.now() + SUBSCRIPTION_LIFETIME),
                "clientState": client_state,
            },
            action=f"subscribing to new mail in {mailbox.folder_name!r} of {mailbox.mailbox}",
        ).json()
    subscription, _created = GraphSubscription.objects.update_or_create(
        integration=integration,
        defaults={
            "subscription_id": answer["id"],
            "resource": resource,
            "notification_url": url,
            "client_state_sha256": sha256_hex(client_state),
            "expires_at": _parse_graph_time(answer["expirationDateTime"]),
            "renewed_at": None,
        },
    )
    logger.info(
        "integration %s: Graph subscription %s until %s",
        integration.name,
        subscription.subscription_id,
        subscription.expires_at,
    )
    return subscription


def _renew(integration: EmailIntegration, subscription: GraphSubscription) -> GraphSubscription:
    client = GraphClient(integration, timeout=TIMEOUT_SECONDS)
    try:
        answer = client.request(
            "PATCH",
            f"{client.base_url}/subscriptions/{subscription.subscription_id}",
            json={"expirationDateTime": _graph_time(timezone.now() + SUBSCRIPTION_LIFETIME)},
            action=f"renewing the subscription to new mail of {client.mailbox}",
        ).json()
    finally:
        client.close()
    subscription.expires_at = _parse_graph_time(answer["expirationDateTime"])
    subscription.renewed_at = timezone.now()
    subscription.save(update_fields=["expires_at", "renewed_at"])
    return subscription


def _forget(subscription: GraphSubscription) -> None:
    """Delete the subscription at Graph (best effort: it ends by itself anyway) and here."""
    integration = EmailIntegration.objects.filter(pk=subscription.integration_id).first()
    if integration is not None and integration.uses_graph and not integration.needs_reconnect:
        client = GraphClient(integration, timeout=TIMEOUT_SECONDS)
        try:
            client.request(
                "DELETE",
                f"{client.base_url}/subscriptions/{subscription.subscription_id}",
                action="deleting a subscription",
            ).close()
        except MailboxError as exc:
            logger.info("Graph subscription %s not deleted: %s", subscription.subscription_id, exc)
        finally:
            client.close()
    subscription.delete()


def _graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _parse_graph_time(text: str) -> datetime:
    # Graph writes seven decimals ("2026-11-29T10:00:00.0000000Z"): keep the seconds.
    seconds = text.rstrip("Z").split(".")[0]
    return datetime.fromisoformat(seconds).replace(tzinfo=UTC)
