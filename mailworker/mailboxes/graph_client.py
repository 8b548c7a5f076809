"""The Graph mailbox's client: the shared Graph HTTP client (transport/graph_http.py) with
its refusals said as the mailboxes say them (MailboxError, and what a reader must fix)."""

from __future__ import annotations

import requests

from integrations.models import EmailIntegration, OAuthAccess
from mailworker.mailboxes.base import MailboxAuthError, MailboxError
from mailworker.mailboxes.oauth import access_token_for
from mailworker.transport import graph_http
from mailworker.transport.graph_http import IMMUTABLE_IDS, GraphProblem, TokenRejected, problem_of

__all__ = [
    "IMMUTABLE_IDS",
    "DeltaExpired",
    "GraphClient",
    "GraphNotFound",
    "GraphProblem",
    "TokenRejected",
    "problem_of",
]


class GraphNotFound(MailboxError):
    """Graph answered 404: the mailbox, folder or message does not exist (any more)."""


class DeltaExpired(MailboxError):
    """Graph no longer knows the delta link (410 Gone, SyncStateNotFound): sync again from
    the start."""


class GraphClient(graph_http.GraphClient):
    def __init__(self, integration: EmailIntegration, *, timeout: float) -> None:
        super().__init__(integration, mailbox=integration.incoming_username, timeout=timeout)

    def access_token(self) -> str:
        return access_token_for(self.integration)

    def refused_fresh_token(self, exc: TokenRejected, action: str) -> MailboxAuthError:
        return MailboxAuthError(
            f"Microsoft Graph refused a fresh access token for {self.mailbox} while "
            f"{action} ({exc}). Check the app's tenant and that its permissions were "
            "granted with admin consent."
        )

    def throttled_error(self, problem: GraphProblem, action: str) -> MailboxError:
        return MailboxError(
            f"Microsoft Graph keeps throttling the mailbox {self.mailbox} "
            f"({problem.status} {problem.code}: {problem.message}) while {action}; "
            f"this pass waited {self.throttled_seconds:.0f} s in all and stops here. "
            "The next pass goes on."
        )

    def request_error(self, exc: requests.RequestException, action: str) -> MailboxError:
        _kind, message = graph_http.describe_request_error(exc, self.base_url, action)
        return MailboxError(message)

    def error_for(self, problem: GraphProblem, action: str) -> MailboxError:
        said = problem.said
        if problem.status == 403:
            return MailboxAuthError(self._permission_advice(problem))
        if problem.status == 404:
            return GraphNotFound(f"Microsoft Graph found nothing while {action} ({said}).")
        if problem.status == 410 or problem.code.lower() in ("syncstatenotfound", "resyncrequired"):
            return DeltaExpired(f"Microsoft Graph forgot the delta link ({said}).")
        if problem.status == 400 and problem.code == "ErrorInvalidUser":
            return GraphNotFound(f"Microsoft Graph does not know the mailbox ({said}).")
        return MailboxError(f"Microsoft Graph answered {said} while {action}.")

    def _permission_advice(self, problem: GraphProblem) -> str:
        """Graph says only "Access is denied": name what is missing, as far as one can tell
        from the outside."""
        said = f"{problem.code}: {problem.message}"
        who = f"Microsoft Graph refused access to the mailbox {self.mailbox} ({said})."
        text = problem.message.lower()
        if "accesspolicy" in text or "[raop]" in text:
            return (
                f"{who} The tenant's application access policy does not include this mailbox "
                f"for the app {self.integration.oauth_client_id}: add the mailbox (or the "
                "mail-enabled security group it is in) to the policy in Exchange Online "
                "(New-ApplicationAccessPolicy -AccessRight RestrictAccess; "
                "Test-ApplicationAccessPolicy shows the result). Changes take up to an hour."
            )
        if self.integration.oauth_access == OAuthAccess.APP_ONLY:
            return (
                f"{who} The app {self.integration.oauth_client_id} needs the Microsoft Graph "
                "application permission Mail.ReadWrite (and Mail.Send to send), granted with "
                "admin consent in Microsoft Entra (App registrations > API permissions). If "
                "the tenant limits the app to some mailboxes with an application access "
                "policy, the policy must include this one."
            )
        return (
            f"{who} The signed-in user needs the delegated permission Mail.ReadWrite "
            "(consented for the app) and, for a shared mailbox, Full Access to it. Press "
            "Connect with Microsoft again after the permission was granted."
        )
