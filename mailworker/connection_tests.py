"""The Test buttons of an integration: send a test email, or log in to the mailbox and count.

Each answers with a TestOutcome an admin reads on the integration page: what happened, in the
server's own words where there are some, and which field of the form the problem concerns so
the page can show it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from integrations.models import EmailIntegration, Encryption
from mailworker.mailboxes.factory import open_mailbox
from mailworker.outbound.compose import ComposedEmail, HeaderInjectionError, compose
from mailworker.senders import Envelope, sender_for
from mailworker.transport.errors import TransportError, TransportErrorKind

# An admin waits for the page: a server that says nothing for this long is not answering.
TEST_TIMEOUT_SECONDS = 15.0
# The field of the test form where the admin types the address.
TO_FIELD = "to"


@dataclass(frozen=True)
class TestOutcome:
    __test__ = False  # not a pytest test class, whatever its name

    ok: bool
    message: str
    field: str = ""  # the form field an error concerns; "" for the whole section


# Outgoing -------------------------------------------------------------------------------


def send_test_email(*, integration: EmailIntegration, to: str) -> TestOutcome:
    """Send a short test email through the integration's sender, now, not via the outbox:
    the admin waits for the server's answer."""
    to = to.strip()
    problem = _invalid_recipient(to)
    if problem:
        return TestOutcome(ok=False, message=problem, field=TO_FIELD)
    if not integration.outgoing_enabled:
        return TestOutcome(
            ok=False, message="Outgoing Emails is off for this integration: turn it on and Apply."
        )
    try:
        composed = compose_test_email(integration=integration, to=to)
    except HeaderInjectionError as exc:
        return TestOutcome(ok=False, message=f"{exc}.", field="name")
    envelope = Envelope(sender=composed.sender, recipients=[to], message=composed.raw)
    try:
        with sender_for(integration, timeout=TEST_TIMEOUT_SECONDS) as sender:
            (delivery,) = sender.send([envelope])
    except TransportError as error:
        return _failed(error)
    if not delivery.accepted:
        if delivery.error is None:
            return TestOutcome(ok=False, message="The server did not accept the email.")
        return _failed(delivery.error)
    return TestOutcome(
        ok=True,
        message=f"Sent to {to} through {sending_route(integration)}. The server answered: "
        f"{delivery.response}",
    )


def sending_route(integration: EmailIntegration) -> str:
    """Where the integration's emails leave, in words."""
    if integration.sends_with_graph:
        return f"Microsoft Graph as {integration.email_address}"
    encryption = Encryption(integration.smtp_encryption).label
    return f"{integration.smtp_host}:{integration.effective_smtp_port} ({encryption})"


def compose_test_email(*, integration: EmailIntegration, to: str) -> ComposedEmail:
    """Composed as the outbox composes every email (the integration's charset, encoding and
    content type, our Message-ID and loop header), and automatic: auto-responders must not
    answer it, and the desk must not record it if it comes back through its own mailboxes."""
    return compose(
        integration=integration,
        to=[to],
        subject=f"Test email from servicedesk (integration {integration.name})",
        text=(
            f"This is a test email from servicedesk, sent through the integration "
            f"“{integration.name}” by {sending_route(integration)}.\n\nIt arrived, so "
            "outgoing email works. No need to answer.\n"
        ),
        automatic=True,
    )


def _failed(error: TransportError) -> TestOutcome:
    """A failure, next to the field it concerns. A refused recipient is the address typed
    into the test form."""
    field = TO_FIELD if error.kind == TransportErrorKind.RECIPIENT_REFUSED else error.field
    message = error.message
    if error.kind == TransportErrorKind.AUTHENTICATION and not message.startswith(
        "Authentication failed"
    ):
        message = f"Authentication failed: {message}"
    return TestOutcome(ok=False, message=message, field=field)


def _invalid_recipient(to: str) -> str:
    if not to:
        return "Enter the address the test email goes to."
    if "\r" in to or "\n" in to or "," in to or ";" in to:
        return "Enter one email address."
    try:
        validate_email(to)
        Address(addr_spec=to)
    except (ValidationError, ValueError, IndexError):
        return f"{to} is not an email address."
    return ""


# Incoming -------------------------------------------------------------------------------


def test_incoming_connection(*, integration: EmailIntegration) -> TestOutcome:
    """Log in to the mailbox, open the folder, and count the emails waiting there."""
    if not integration.incoming_enabled:
        return TestOutcome(
            ok=False, message="Incoming Emails is off for this integration: turn it on and Apply."
        )
    host = integration.effective_incoming_server
    port = integration.effective_incoming_port
    try:
        with open_mailbox(integration, timeout=TEST_TIMEOUT_SECONDS) as mailbox:
            try:
                waiting = mailbox.count()
            except NotImplementedError:
                waiting = None
    except TransportError as error:
        return _failed(error)
    where = f"Logged in to {host}:{port} as {integration.incoming_username}"
    if integration.uses_graph:
        where = f"Connected to Microsoft Graph ({host}) for {integration.incoming_username}"
    if integration.mailbox_protocol in ("imap", "microsoft_graph"):
        where += f", folder {integration.incoming_folder}"
    if waiting is None:
        return TestOutcome(ok=True, message=f"{where}.")
    emails = "email" if waiting == 1 else "emails"
    return TestOutcome(ok=True, message=f"{where}: {waiting} {emails} waiting.")


# Its name starts with "test": keep pytest from collecting it where it is imported.
test_incoming_connection.__test__ = False  # type: ignore[attr-defined]
