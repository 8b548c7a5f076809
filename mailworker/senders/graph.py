"""Microsoft Graph sender: POST /users/{mailbox}/sendMail with the composed MIME, base64.

Graph sends the bytes the delivery layer stored (our signed Message-ID, threading headers,
record number, charset and transfer encoding all hold) and saves a copy to the mailbox's
Sent Items; 202 Accepted is its "queued". Graph takes the recipients from the MIME's To, Cc
and Bcc headers, which the composer writes from the same list as the envelope's; the one
thing no header of the composed email carries, an agent's Bcc, is added as a Bcc header for
Graph alone (Exchange takes it as the recipients and removes it from what they get).

Throttling (429, 503 with Retry-After) is waited out within GRAPH_THROTTLE_MAX_WAIT_SECONDS
per sender, i.e. per drain of the outbox; then that email and the rest are temporary
failures, retried with the outbox's back-off. Other 5xx are temporary at once (sendMail is
not repeated when its outcome is unknown: 504 may have sent it). 400 refuses that email
(an invalid recipient, a message too large); 401 refreshes the token once; 403 names the
missing Mail.Send permission or the access policy, and ends the batch.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from integrations.models import EmailIntegration, OAuthAccess
from mailworker.senders.base import DEFAULT_TIMEOUT_SECONDS, Delivery, Envelope, Sender
from mailworker.transport.errors import TransportError, TransportErrorKind
from mailworker.transport.graph_http import GraphClient, GraphProblem, TokenRejected

# Waited out within the budget. Not 504: sendMail may have gone through.
SEND_RETRIED_STATUSES = frozenset({429, 503})
# Refusals every email of the batch would meet: the app, its permissions, its grant.
SESSION_KINDS = frozenset(
    {
        TransportErrorKind.PERMISSION,
        TransportErrorKind.AUTHENTICATION,
        TransportErrorKind.NEEDS_RECONNECT,
    }
)
ACCEPTED = "202 Accepted by Microsoft Graph (sendMail; a copy saved to Sent Items)"


class GraphSender(Sender):
    def __init__(
        self, integration: EmailIntegration, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        super().__init__(integration, timeout=timeout)
        self._client: GraphSendClient | None = None

    def open(self) -> None:
        """Get the token now, so a refused grant or app shows before anything is sent."""
        if self._client is None:
            self._client = GraphSendClient(self.integration, timeout=self.timeout)
        try:
            self._client.token()
        except TransportError as error:
            if error.kind in (
                TransportErrorKind.AUTHENTICATION,
                TransportErrorKind.NEEDS_RECONNECT,
            ):
                error.field = error.field or "oauth_client_secret"
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def send(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        if not envelopes:
            return []
        self.open()
        assert self._client is not None
        deliveries: list[Delivery] = []
        for envelope in envelopes:
            try:
                delivery = self._send_one(self._client, envelope)
            except TransportError as error:
                if not deliveries:
                    raise  # nothing went out: the session failed, as SMTP's AUTH would
                # What went out stays sent; the rest waits for an admin's fix, retried.
                error.temporary = True
                delivery = Delivery.failed(error)
            deliveries.append(delivery)
            if delivery.error is not None and delivery.error.temporary:
                # Throttled past the budget, or Graph failing: the rest waits for a later
                # drain rather than asking again now.
                rest = len(envelopes) - len(deliveries)
                return deliveries + [delivery] * rest
        return deliveries

    def _send_one(self, client: GraphSendClient, envelope: Envelope) -> Delivery:
        """The email's Delivery; raises TransportError when the app or its token is refused
        (every email would be)."""
        try:
            client.request(
                "POST",
                client.user_url("/sendMail"),
                action=f"sending an email to {', '.join(envelope.recipients)}",
                retried=SEND_RETRIED_STATUSES,
                data=base64.b64encode(with_bcc_header(envelope)),
                headers={"Content-Type": "text/plain"},
            )
        except TransportError as error:
            if error.kind in SESSION_KINDS:
                raise  # the whole batch would meet it: the session fails
            return Delivery.failed(error)
        return Delivery(accepted=True, response=ACCEPTED)


def with_bcc_header(envelope: Envelope) -> bytes:
    """The message with a Bcc header naming the envelope's hidden recipients, if any."""
    if not envelope.bcc:
        return envelope.message
    return (
        b"Bcc: " + ", ".join(envelope.bcc).encode("ascii", "replace") + b"\r\n" + envelope.message
    )


class GraphSendClient(GraphClient):
    """The Graph client as the sending mailbox, its refusals in a sender's words."""

    def __init__(self, integration: EmailIntegration, *, timeout: float) -> None:
        super().__init__(integration, mailbox=integration.email_address, timeout=timeout)

    def error_for(self, problem: GraphProblem, action: str) -> TransportError:
        said = problem.said
        if problem.status == 403:
            policy = "[raop]" in problem.message.lower()
            return TransportError(
                TransportErrorKind.PERMISSION,
                self._permission_advice(problem),
                # The policy leaves out this mailbox; otherwise the app lacks a permission.
                field="email_address" if policy else "oauth_client_id",
            )
        if problem.status == 413 or "size" in problem.code.lower():
            return TransportError(
                TransportErrorKind.MESSAGE_REFUSED,
                f"Microsoft Graph refused the email as too large ({said}).",
            )
        if problem.code == "ErrorInvalidRecipients" or "recipient" in problem.message.lower():
            return TransportError(
                TransportErrorKind.RECIPIENT_REFUSED,
                f"Microsoft Graph refused a recipient while {action} ({said}).",
            )
        if problem.status == 404 or problem.code == "ErrorInvalidUser":
            return TransportError(
                TransportErrorKind.CONFIGURATION,
                f"Microsoft Graph does not know the mailbox {self.mailbox} ({said}): enter the "
                "address of a mailbox of the tenant.",
                field="email_address",
            )
        if problem.status >= 500:
            return TransportError(
                TransportErrorKind.PROTOCOL,
                f"Microsoft Graph answered {said} while {action}; it is tried again later.",
                temporary=True,
            )
        return TransportError(
            TransportErrorKind.MESSAGE_REFUSED,
            f"Microsoft Graph refused the email ({said}) while {action}.",
        )

    def throttled_error(self, problem: GraphProblem, action: str) -> TransportError:
        return TransportError(
            TransportErrorKind.THROTTLED,
            f"Microsoft Graph keeps throttling sending from {self.mailbox} ({problem.said}); "
            f"this drain waited {self.throttled_seconds:.0f} s in all. The email is sent at a "
            "later try.",
            temporary=True,
        )

    def refused_fresh_token(self, exc: TokenRejected, action: str) -> TransportError:
        return TransportError(
            TransportErrorKind.AUTHENTICATION,
            f"Microsoft Graph refused a fresh access token for {self.mailbox} while {action} "
            f"({exc}). Check the app's tenant and that its permissions were granted with admin "
            "consent.",
            field="oauth_client_secret",
        )

    def _permission_advice(self, problem: GraphProblem) -> str:
        who = (
            f"Microsoft Graph refused to send as {self.mailbox} "
            f"({problem.code}: {problem.message})."
        )
        if "[raop]" in problem.message.lower():
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
                "application permission Mail.Send, granted with admin consent in Microsoft "
                "Entra (App registrations > API permissions)."
            )
        return (
            f"{who} The signed-in user needs the delegated permission Mail.Send (consented "
            "for the app) and, to send as a shared mailbox, Send As on it (Mail.Send.Shared). "
            "Press Connect with Microsoft again after the permission was granted."
        )
