"""The one place that picks the adapter for an integration's mailbox."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from integrations.models import EmailIntegration, IncomingProtocol, MailboxAccess
from mailworker.mailboxes.base import DEFAULT_MAX_MESSAGE_BYTES, Mailbox, MailboxError
from mailworker.mailboxes.graph import GraphMailbox
from mailworker.mailboxes.imap import ImapMailbox
from mailworker.mailboxes.oauth import NeedsReconnect
from mailworker.mailboxes.pop3 import Pop3Mailbox

ADAPTERS: dict[str, type[Mailbox]] = {
    MailboxAccess.IMAP: ImapMailbox,
    MailboxAccess.POP3: Pop3Mailbox,
    IncomingProtocol.MICROSOFT_GRAPH: GraphMailbox,
}


def open_mailbox(integration: EmailIntegration, **options: Any) -> Mailbox:
    """The adapter for the integration, not yet connected: use it as a context manager.

    `options` go to the adapter (timeout, max_message_bytes). Without max_message_bytes the
    desk's MAX_INCOMING_EMAIL_BYTES setting applies.
    """
    if integration.needs_reconnect:
        # Not even a connection: the provider refused the grant and only an admin can fix it.
        raise NeedsReconnect(f"Needs reconnect: {integration.grant.needs_reconnect_reason}")
    adapter = ADAPTERS.get(integration.mailbox_protocol)
    if adapter is None:
        raise MailboxError(
            f"The mailbox protocol {integration.mailbox_protocol!r} is not supported."
        )
    options.setdefault(
        "max_message_bytes",
        getattr(settings, "MAX_INCOMING_EMAIL_BYTES", DEFAULT_MAX_MESSAGE_BYTES),
    )
    return adapter(integration, **options)
