"""Making Microsoft 365 (Graph) integrations against the tests' Graph and OAuth servers."""

from __future__ import annotations

import secrets
from typing import Any

from integrations.models import EmailIntegration
from integrations.services import Secrets, save_integration
from tests.graph_server import GraphServer
from tests.oauth_helpers import new_oauth_mailbox


def make_graph_integration(
    graph: GraphServer, *, app_only: bool = True, mailbox: str | None = None, **overrides: Any
) -> EmailIntegration:
    """An integration reading `mailbox` (a new one by default) through Graph. App-only by
    default: the app is registered with the token server and may read the mailbox."""
    mailbox = mailbox or new_oauth_mailbox()
    graph.add_mailbox(mailbox)
    client = graph.oauth.register_client("microsoft", app_mailbox=mailbox if app_only else "")
    fields: dict[str, Any] = {
        "name": f"Graph {secrets.token_hex(3)}",
        "incoming_enabled": True,
        "incoming_protocol": "microsoft_graph",
        "oauth_access": "app" if app_only else "delegated",
        "oauth_tenant": client.tenant,
        "oauth_client_id": client.client_id,
        "incoming_username": mailbox,
    }
    fields |= overrides
    return save_integration(
        integration=EmailIntegration(**fields),
        secrets=Secrets(oauth_client_secret=client.secret),
    )
