"""Nothing is lost and nothing doubled, shown on a real Dovecot: the ack follows the commit,
a re-fetched email is recognised, and a poison email is quarantined while the batch goes on."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from mailworker.mailboxes.factory import open_mailbox
from mailworker.pipeline import apply as apply_module
from mailworker.pipeline.passes import run_pass
from records.models import Message, Quarantine, ServiceRecord
from tests.mail import make_email

pytestmark = pytest.mark.django_db


class CrashBeforeAck:
    """A real mailbox whose first ack never happens: the worker died after the commit."""

    def __init__(self, integration):
        self.mailbox = open_mailbox(integration)

    def __enter__(self):
        self.mailbox.connect()
        return self

    def __exit__(self, *exc_info):
        self.mailbox.close()

    def fetch(self, *, limit):
        return self.mailbox.fetch(limit=limit)

    def ack(self, uids):
        raise ConnectionResetError("worker killed between commit and ack")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_crash_between_commit_and_ack_makes_no_duplicate(dovecot, dovecot_integration, protocol):
    integration = dovecot_integration(protocol=protocol, encryption="ssl")
    raws = [make_email(subject=f"Issue {n}", body=f"Body {n}") for n in range(5)]
    dovecot.deliver(integration.incoming_username, raws)

    crashed = run_pass(integration=integration, mailbox_factory=CrashBeforeAck)
    assert crashed.failed
    assert ServiceRecord.objects.count() == 5
    assert dovecot.count(integration.incoming_username) == 5  # committed, never acked

    again = run_pass(integration=integration)
    assert not again.failed, again.errors
    assert again.counts["already processed"] == 5
    assert ServiceRecord.objects.count() == 5
    assert Message.objects.count() == 5
    assert dovecot.count(integration.incoming_username) == 0


def test_a_failure_before_commit_leaves_the_email_and_nothing_half_written(
    dovecot, dovecot_integration, monkeypatch
):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(integration.incoming_username, [make_email()])
    real_log_email = apply_module.log_email

    def database_goes_away(ctx, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(apply_module, "log_email", database_goes_away)
    report = run_pass(integration=integration)
    assert report.failed
    assert "OperationalError" in report.errors[0]
    # The record was created before the failure, and rolled back with it.
    assert not ServiceRecord.objects.exists()
    assert not Quarantine.objects.exists()
    assert dovecot.count(integration.incoming_username) == 1

    monkeypatch.setattr(apply_module, "log_email", real_log_email)
    assert run_pass(integration=integration).counts["created"] == 1
    assert dovecot.count(integration.incoming_username) == 0


def test_one_poison_email_among_50_leaves_50_records_and_one_quarantine(
    dovecot, dovecot_integration, monkeypatch
):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    # From 50 people: one sender's 50 new records within an hour would be a flood.
    raws = [
        make_email(sender=f"user{n}@customer.test", subject=f"Request {n}", body=f"Body {n}")
        for n in range(50)
    ]
    raws.insert(17, make_email(subject="POISON", body="this one breaks the code"))
    dovecot.deliver(integration.incoming_username, raws)
    real_open_record = apply_module.open_record

    def open_record(ctx, *, subject, body):
        if subject == "POISON":
            raise ValueError("a bug this email triggers")
        return real_open_record(ctx, subject=subject, body=body)

    monkeypatch.setattr(apply_module, "open_record", open_record)
    report = run_pass(integration=integration, batch_size=20)
    assert not report.failed, report.errors
    assert ServiceRecord.objects.count() == 50
    entry = Quarantine.objects.get()
    assert entry.subject == "POISON"
    assert "a bug this email triggers" in entry.reason
    assert bytes(entry.raw_email) == raws[17]
    assert dovecot.count(integration.incoming_username) == 0
