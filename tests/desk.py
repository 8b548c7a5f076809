"""A desk for tests written as what happens to email: an incoming integration on the real
Dovecot, the SMTP integration it sends through on aiosmtpd, and what end users received."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default as default_policy

from integrations.models import EmailIntegration
from mailworker.delivery import send_due
from mailworker.pipeline.passes import run_pass


class Desk:
    """An IMAP mailbox on Dovecot that the desk reads, an SMTP integration on aiosmtpd that
    it sends through, and the end users' view of both."""

    def __init__(self, dovecot, smtp_server, mailbox: EmailIntegration) -> None:
        self.dovecot, self.smtp_server, self.mailbox = dovecot, smtp_server, mailbox

    def receive(self, *raws: bytes) -> dict[str, int]:
        """The emails arrive in the mailbox, the worker runs a pass and the outbox is sent."""
        self.dovecot.deliver(self.mailbox.incoming_username, list(raws))
        report = run_pass(integration=self.mailbox)
        assert not report.failed, report.errors
        send_due()
        return report.counts

    def inbox_of(self, address: str) -> list[EmailMessage]:
        """Everything the desk has sent to `address` so far."""
        return [
            email.message_from_bytes(message.raw, policy=default_policy)
            for message in self.smtp_server.messages
            if address in message.rcpt_tos
        ]

    def raw_sent_to(self, address: str) -> list[bytes]:
        return [m.raw for m in self.smtp_server.messages if address in m.rcpt_tos]

    def configure(self, **fields) -> None:
        EmailIntegration.objects.filter(pk=self.mailbox.pk).update(**fields)
        self.mailbox.refresh_from_db()
