"""The Test buttons of an integration: send a test email, or log in to the mailbox and count.

Each answers with a TestOutcome an admin reads on the integration page: what happened, in the
server's own words where there are some, and which field of the form the problem concerns so
the page can show it there.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr, make_msgid

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils import timezone

from integrations.models import EmailIntegration, Encryption
from mailworker.headers import LOOP_HEADER
from mailworker.mailboxes.base import MailboxAuthError, MailboxError
from mailworker.mailboxes.factory import open_mailbox
from mailworker.outbound.smtp import Envelope, SmtpFailure, send_envelopes

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
    """Send a short test email through the integration's SMTP server, now, not via the outbox:
    the admin waits for the server's answer."""
    to = to.strip()
    problem = _invalid_recipient(to)
    if problem:
        return TestOutcome(ok=False, message=problem, field=TO_FIELD)
    if not integration.outgoing_enabled:
        return TestOutcome(
            ok=False, message="Outgoing Emails is off for this integration: turn it on and Apply."
        )
    envelope = Envelope(
        sender=integration.email_address,
        recipients=[to],
        message=compose_test_email(integration=integration, to=to),
    )
    try:
        (delivery,) = send_envelopes(integration, [envelope], timeout=TEST_TIMEOUT_SECONDS)
    except SmtpFailure as failure:
        return TestOutcome(ok=False, message=failure.problem.message, field=failure.problem.field)
    if not delivery.accepted:
        problem = delivery.problem
        if problem is None:
            return TestOutcome(ok=False, message="The server did not accept the email.")
        # A refused recipient is the address typed into the test form.
        field = TO_FIELD if problem.kind == "recipient" else problem.field
        return TestOutcome(ok=False, message=problem.message, field=field)
    where = f"{integration.smtp_host}:{integration.effective_smtp_port}"
    return TestOutcome(
        ok=True, message=f"Sent to {to} through {where}. The server answered: {delivery.response}"
    )


def compose_test_email(*, integration: EmailIntegration, to: str) -> bytes:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = formataddr((integration.name, integration.email_address))
    message["To"] = to
    message["Subject"] = f"Test email from servicedesk (integration {integration.name})"
    message["Date"] = format_datetime(timezone.now())
    message["Message-ID"] = make_msgid(domain=_domain_of(integration.email_address))
    # Automatic: auto-responders must not answer it, and the desk must not record it if it
    # comes back through one of its own mailboxes.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message[LOOP_HEADER] = "test"
    encryption = Encryption(integration.smtp_encryption).label
    message.set_content(
        f"This is a test email from servicedesk, sent through the integration "
        f"“{integration.name}” by {integration.smtp_host}:{integration.effective_smtp_port} "
        f"({encryption}).\n\nIt arrived, so outgoing email works. No need to answer.\n"
    )
    return message.as_bytes()


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


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2] or "servicedesk.invalid"


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
    except MailboxAuthError as exc:
        return TestOutcome(
            ok=False, message=f"Authentication failed: {exc}", field=_password(integration)
        )
    except MailboxError as exc:
        return TestOutcome(ok=False, message=str(exc), field=_incoming_field(integration, exc))
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


def _password(integration: EmailIntegration) -> str:
    return "oauth_client_secret" if integration.uses_oauth else "incoming_password"


def _incoming_field(integration: EmailIntegration, exc: MailboxError) -> str:
    """The field to fix, from what the adapter's error was caused by."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return "ca_certificate"
    if isinstance(cause, ssl.SSLError):
        return "incoming_encryption"
    if isinstance(cause, ConnectionRefusedError):
        return "incoming_port"
    if isinstance(cause, socket.gaierror | TimeoutError):
        return "incoming_server"
    if isinstance(cause, imaplib.IMAP4.error) and not isinstance(cause, imaplib.IMAP4.abort):
        # Past the login (refused logins are MailboxAuthError): selecting the folder failed.
        return "incoming_folder"
    return ""
