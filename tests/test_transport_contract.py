"""The transport contract: one error vocabulary for mailboxes and senders, senders chosen by
the integration's outgoing protocol, queueing that starts delivery by the task's name, and
one rule for which integration sends."""

from __future__ import annotations

import email
import subprocess
import sys
from email import policy

import pytest

from integrations.models import EmailIntegration
from integrations.selectors import sending_integration
from mailworker.connection_tests import TO_FIELD, send_test_email
from mailworker.mailboxes.base import MailboxAuthError, MailboxError
from mailworker.mailboxes.factory import open_mailbox
from mailworker.models import OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.senders import Envelope, sender_for
from mailworker.senders.smtp import SmtpSender
from mailworker.transport.errors import TransportError, TransportErrorKind
from records.selectors import default_reply_integration, sending_integrations
from records.services import create_record, get_or_create_end_user
from tests.conftest import PROJECT_ROOT, free_port
from tests.workers import Workers, wait_until


def test_a_refused_mailbox_login_is_an_authentication_error_on_the_password(
    db, dovecot_integration
) -> None:
    integration = dovecot_integration(incoming_password="wrong")
    with pytest.raises(TransportError) as caught, open_mailbox(integration):
        pass
    error = caught.value
    # The mail engine's older names still catch it.
    assert isinstance(error, MailboxAuthError)
    assert error.kind == TransportErrorKind.AUTHENTICATION
    assert error.field == "incoming_password"
    assert not error.temporary


def test_a_missing_folder_names_the_folder_field(db, dovecot_integration) -> None:
    integration = dovecot_integration(incoming_folder="No such folder")
    with pytest.raises(MailboxError) as caught, open_mailbox(integration):
        pass
    assert caught.value.kind == TransportErrorKind.FOLDER_MISSING
    assert caught.value.field == "incoming_folder"


def test_a_refused_mailbox_connection_is_temporary_and_names_the_port(
    db, dovecot_integration
) -> None:
    integration = dovecot_integration(incoming_port=free_port())
    with pytest.raises(TransportError) as caught, open_mailbox(integration):
        pass
    assert caught.value.kind == TransportErrorKind.CONNECTION_REFUSED
    assert caught.value.field == "incoming_port"
    assert caught.value.temporary


def test_the_sender_is_chosen_by_the_outgoing_protocol(db, smtp_integration) -> None:
    integration = smtp_integration()
    with sender_for(integration) as sender:
        assert isinstance(sender, SmtpSender)
    integration.outgoing_protocol = "carrier-pigeon"
    with pytest.raises(TransportError) as caught:
        sender_for(integration)
    assert caught.value.kind == TransportErrorKind.CONFIGURATION
    assert caught.value.field == "outgoing_protocol"


def test_a_sender_can_be_opened_again_after_it_was_closed(
    db, smtp_server, smtp_integration
) -> None:
    """As Django's backends: open, close, and open again (a drain per beat tick)."""
    integration = smtp_integration()
    smtp_server.clear()
    sender = sender_for(integration)
    envelope = Envelope("desk@desk.test", ["jane@customer.test"], b"Subject: x\r\n\r\nx\r\n")
    for _round in range(2):
        sender.open()
        (delivery,) = sender.send([envelope])
        assert delivery.accepted, delivery.error
        sender.close()
    assert len(smtp_server.messages) == 2


def test_the_reply_form_and_the_outbox_pick_the_same_integration(db) -> None:
    """Neither integration is the default and the record came from none: both pick the
    oldest that sends (the reply form once picked the first by name, the outbox by age)."""
    fields = {"outgoing_enabled": True, "smtp_host": "127.0.0.1"}
    zulu = EmailIntegration.objects.create(name="Zulu", email_address="z@desk.test", **fields)
    EmailIntegration.objects.create(name="Alpha", email_address="a@desk.test", **fields)
    requester, _created = get_or_create_end_user(email="jane@customer.test")
    record = create_record(title="Printer", description="", requester=requester)
    form_default = default_reply_integration(record=record, choices=sending_integrations())
    assert form_default == sending_integration(record=record) == zulu
    queued = queue_email(kind="reply", to=["jane@customer.test"], subject="Hi", text="Hi")
    assert queued.rows[0].integration == zulu


QUEUE_ON_COMMIT = """
from django.db import transaction
from integrations.models import EmailIntegration
from mailworker.outbound.queue import queue_email

with transaction.atomic():
    queue_email(
        kind="reply",
        to=["jane@customer.test"],
        subject="Sent on commit",
        text="Hello",
        integration=EmailIntegration.objects.get(pk={pk}),
        automatic=False,
    )
"""


@pytest.mark.django_db(transaction=True)
def test_a_committed_email_is_sent_by_a_worker_at_once(
    workers: Workers, smtp_server, smtp_integration
) -> None:
    """Queueing starts the send task by its name when the transaction commits: a worker
    sends the email without waiting for beat's next drain. The email is queued by a process
    of its own on the test broker, as the web queues an agent's reply."""
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()
    worker = workers.celery_worker()
    worker.start()

    queued = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", QUEUE_ON_COMMIT.format(pk=integration.pk)],
        cwd=PROJECT_ROOT,
        env=workers.environment(OUTBOX_SEND_ON_COMMIT="true"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert queued.returncode == 0, queued.stderr

    wait_until(
        lambda: OutboxEmail.objects.filter(state=OutboxEmail.State.SENT).exists(),
        timeout=60,
        message=f"the worker sent nothing:\n{worker.output()[-3000:]}",
    )
    (received,) = smtp_server.messages
    assert b"Subject: Sent on commit" in received.raw


def test_the_test_email_is_composed_as_the_outbox_composes(
    db, smtp_server, smtp_integration
) -> None:
    """The Test button's email follows the integration's settings as every email does (it
    once had a composer of its own that ignored the transfer encoding and the charset)."""
    integration = smtp_integration(outgoing_encoding="base64", outgoing_charset="windows-1252")
    smtp_server.clear()
    outcome = send_test_email(integration=integration, to="jane@customer.test")
    assert outcome.ok, outcome.message
    (received,) = smtp_server.messages
    message = email.message_from_bytes(received.raw, policy=policy.default)
    assert message["Content-Transfer-Encoding"] == "base64"
    assert message.get_content_charset() == "windows-1252"
    assert "outgoing email works" in message.get_content()
    assert message["X-Servicedesk-Loop"] == "servicedesk"


def test_a_test_email_to_a_refused_recipient_names_the_address_field(
    db, smtp_server, smtp_integration
) -> None:
    integration = smtp_integration()
    outcome = send_test_email(integration=integration, to="unknown@refused.test")
    assert not outcome.ok
    assert "550 5.1.1" in outcome.message
    assert outcome.field == TO_FIELD
