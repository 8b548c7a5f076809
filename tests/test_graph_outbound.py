"""Sending through Microsoft Graph (sendMail with the composed MIME), against the tests' Graph
server with tokens from the tests' OAuth server; and Settings > Email for Microsoft 365 (Graph)."""

from __future__ import annotations

import email
import json
import time
from collections.abc import Callable
from email.policy import default as default_policy
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse

from integrations.forms import EmailIntegrationForm
from integrations.models import EmailIntegration, OAuthGrant
from mailworker.connection_tests import send_test_email
from mailworker.delivery import send_due
from mailworker.models import NotificationSettings, OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.pipeline.passes import run_pass
from records.models import Direction, ServiceRecord
from records.services import create_record, get_or_create_end_user, post_agent_reply
from tests.graph_helpers import make_graph_integration
from tests.graph_server import GraphServer
from tests.mail import make_email
from tests.oauth_helpers import connect_with_test_client, make_oauth_integration
from tests.test_connection_tests import page, run_test, text_of

pytestmark = pytest.mark.django_db
State = OutboxEmail.State


@pytest.fixture
def acknowledgements_only(db: Any) -> None:
    """Of the automatic emails, only the end user's "record created"."""
    NotificationSettings.objects.update_or_create(
        pk=1,
        defaults={
            "end_user_on_created": True,
            "admins_on_created": False,
            "admins_on_updated": False,
            "end_user_on_details_changed": False,
            "admins_on_details_changed": False,
        },
    )


@pytest.fixture
def graph_desk(graph: GraphServer, acknowledgements_only) -> Callable[..., EmailIntegration]:
    """An integration that reads and sends through Graph, app-only."""

    def make(**overrides: Any) -> EmailIntegration:
        integration = make_graph_integration(graph, **overrides)
        integration.outgoing_enabled = True
        integration.outgoing_protocol = "microsoft_graph"
        integration.email_address = integration.incoming_username
        for name, value in overrides.items():
            setattr(integration, name, value)
        integration.full_clean()
        integration.save()
        return integration

    return make


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=default_policy)


def a_row(integration: EmailIntegration, to: str = "jane@customer.test") -> OutboxEmail:
    (row,) = queue_email(
        kind=OutboxEmail.Kind.NOTIFICATION,
        to=[to],
        subject="Your printer",
        text="We are on it.",
        integration=integration,
    ).rows
    return row


def row_of(queued: OutboxEmail) -> OutboxEmail:
    return OutboxEmail.objects.get(pk=queued.pk)


def make_due(row: OutboxEmail) -> None:
    OutboxEmail.objects.filter(pk=row.pk).update(next_attempt_at=None)


# The acknowledgement goes out through Graph, and the answer threads back ----------------------


def test_an_acknowledgement_goes_out_through_graph_byte_for_byte_and_the_reply_threads_back(
    graph, graph_desk
) -> None:
    integration = graph_desk(outgoing_charset="iso-8859-1")
    mailbox = integration.incoming_username
    graph.deliver(
        mailbox,
        make_email(subject="Drucker in Köln druckt nicht", body="Nur leere Seiten."),
    )
    assert run_pass(integration=integration).counts["created"] == 1
    record = ServiceRecord.objects.get()

    assert send_due().sent == 1

    (row,) = OutboxEmail.objects.filter(record=record)
    assert row.state == State.SENT
    assert "202 Accepted by Microsoft Graph" in row.smtp_response
    sender_mailbox, mime = graph.sent[-1]
    assert sender_mailbox == mailbox
    assert mime == bytes(row.raw_message)  # the composed bytes, byte for byte
    message = parsed(mime)
    assert message["Message-ID"] == row.message_id
    assert message["Message-ID"].startswith(f"<sd.{record.pk}.")  # the signed id
    assert f"[#{record.pk}]" in message["Subject"]
    assert "Köln" in message["Subject"]
    assert message.get_body(("plain",)).get_content_charset() == "iso-8859-1"
    assert [m.mime for m in graph.messages(mailbox, "sentitems")] == [mime]
    logged = record.messages.get(direction=Direction.OUTGOING)
    assert logged.message_id == row.message_id
    assert row.log_message_id == logged.pk

    # Jane answers with the number gone from the subject: the signed id still finds it.
    answer = make_email(
        subject="Re: your answer",
        body="Thanks, it works again.",
        headers={"In-Reply-To": message["Message-ID"]},
    )
    graph.deliver(mailbox, answer)
    report = run_pass(integration=integration)
    assert report.counts["appended"] == 1, report.errors
    assert ServiceRecord.objects.count() == 1
    assert [m.direction for m in record.messages.order_by("id")] == ["in", "out", "in"]


def test_an_agent_s_bcc_reaches_graph_only_as_the_bcc_header_graph_strips(
    graph, graph_desk, django_user_model
) -> None:
    """Graph reads the recipients from the MIME's headers: the Bcc the stored email never
    carries is added for Graph alone (Exchange removes it from what the recipients get)."""
    integration = graph_desk()
    requester, _ = get_or_create_end_user(email="jane@customer.test")
    record = create_record(title="Printer on fire", description="", requester=requester)
    agent = django_user_model.objects.create_user(
        username="agent", email="agent@desk.test", is_staff=True
    )
    post_agent_reply(
        record=record,
        author=agent,
        body="Unplug it.",
        integration_id=integration.pk,
        cc=["boss@customer.test"],
        bcc=["audit@partner.test"],
    )
    assert send_due().sent == 1
    _mailbox, mime = graph.sent[-1]
    message = parsed(mime)
    assert message["Bcc"] == "audit@partner.test"
    assert message["Cc"] == "boss@customer.test" and message["To"] == "jane@customer.test"
    (row,) = OutboxEmail.objects.filter(record=record)
    assert b"audit@partner.test" not in bytes(row.raw_message)


# Throttling and failures ---------------------------------------------------------------------


def test_throttling_with_retry_after_is_waited_out_and_the_email_goes(graph, graph_desk) -> None:
    integration = graph_desk()
    queued = a_row(integration)
    graph.throttle(1, status=429, retry_after=1)
    started = time.monotonic()

    assert send_due().sent == 1

    assert time.monotonic() - started >= 1.0
    assert row_of(queued).state == State.SENT
    assert len([s for s in graph.sent if s[0] == integration.email_address]) == 1


def test_a_mailbox_that_stays_throttled_leaves_the_emails_for_a_later_drain(
    graph, graph_desk, settings
) -> None:
    settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS = 1
    integration = graph_desk()
    queued = [a_row(integration, to=f"user{n}@customer.test") for n in range(3)]
    graph.throttle(5, status=503, retry_after=2)

    report = send_due()

    assert (report.sent, report.retrying) == (0, 3)
    for row in map(row_of, queued):
        assert row.state == State.PENDING and row.attempts == 1
        assert row.next_attempt_at is not None
        assert "keeps throttling" in row.last_error and "503" in row.last_error
    graph.stop_throttling()
    for row in queued:
        make_due(row)
    assert send_due().sent == 3
    assert {row_of(row).state for row in queued} == {State.SENT}


def test_a_server_error_is_retried_with_back_off_and_sent_once(graph, graph_desk) -> None:
    integration = graph_desk()
    queued = a_row(integration)
    graph.fail_next("POST sendMail")

    assert send_due().retrying == 1

    row = row_of(queued)
    assert row.state == State.PENDING and row.attempts == 1
    assert "500 ErrorInternalServerError" in row.last_error
    make_due(row)
    assert send_due().sent == 1
    assert len([s for s in graph.sent if s[0] == integration.email_address]) == 1


def test_an_invalid_recipient_fails_that_email_with_graph_s_words(graph, graph_desk) -> None:
    integration = graph_desk()
    graph.unknown_recipients.add("nobody@customer.test")
    refused = a_row(integration, to="nobody@customer.test")
    fine = a_row(integration, to="jane@customer.test")

    report = send_due()

    assert (report.sent, report.failed) == (1, 1)
    row = row_of(refused)
    assert row.state == State.FAILED
    assert "ErrorInvalidRecipients" in row.last_error
    assert "nobody@customer.test" in row.last_error
    assert row_of(fine).state == State.SENT


def test_an_expired_token_is_refreshed_once(graph, graph_desk) -> None:
    integration = graph_desk()
    a_row(integration)
    assert send_due().sent == 1
    grants = graph.oauth.grants["client_credentials"]
    graph.oauth.expire_access_tokens(integration.email_address)  # revoked early
    queued = a_row(integration)

    assert send_due().sent == 1

    assert row_of(queued).state == State.SENT
    assert graph.oauth.grants["client_credentials"] == grants + 1


# The Test button ----------------------------------------------------------------------------


def test_the_test_email_goes_through_graph(graph, graph_desk) -> None:
    integration = graph_desk()

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert outcome.ok, outcome.message
    assert f"through Microsoft Graph as {integration.email_address}" in outcome.message
    assert "202 Accepted" in outcome.message
    message = parsed(graph.sent[-1][1])
    assert message["To"] == "jane@customer.test"
    assert "Microsoft Graph" in message.get_content()


def test_without_mail_send_the_test_button_names_the_permission_next_to_the_app(
    graph, graph_desk, client, admin_user
) -> None:
    integration = graph_desk()
    graph.app(integration.oauth_client_id).roles = {"Mail.ReadWrite"}
    client.force_login(admin_user)

    response = run_test(
        client,
        reverse("integration_tests:outgoing", args=[integration.pk]),
        {"to": "jane@customer.test"},
    )

    soup = page(response)
    error = text_of(soup, "#oauth-app #field-oauth_client_id .test-error")
    assert "ErrorAccessDenied" in error
    assert "application permission Mail.Send" in error
    assert "admin consent" in error
    assert len(soup.select(".test-error")) == 1


def test_a_mailbox_outside_the_access_policy_is_named(graph, graph_desk) -> None:
    integration = graph_desk()
    graph.app(integration.oauth_client_id).allowed_mailboxes = {"someone.else@desk.test"}

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert not outcome.ok
    assert outcome.field == "email_address"  # the mailbox the policy leaves out
    assert "application access policy" in outcome.message
    assert "New-ApplicationAccessPolicy" in outcome.message


# Settings > Email ---------------------------------------------------------------------------


def form_data(integration: EmailIntegration, **changes: Any) -> dict[str, Any]:
    """What the integration's page posts back unchanged, with these changes."""
    form = EmailIntegrationForm(instance=integration)
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if name in ("incoming_password", "smtp_password") or name.startswith("oauth_client_s"):
            continue
        if isinstance(value, bool):
            if value:
                data[name] = "on"
            continue
        if isinstance(value, list | tuple):
            data[name] = field.prepare_value(value) if hasattr(field, "prepare_value") else value
            if isinstance(data[name], list | tuple):
                data[name] = [getattr(v, "pk", v) for v in data[name]]
            continue
        data[name] = "" if value is None else value
    for name, value in changes.items():
        if value is False or value is None:
            data.pop(name, None)
        else:
            data[name] = "on" if value is True else value
    return data


GRAPH_FORM = {
    "incoming_protocol": "microsoft_graph",
    "incoming_folder": "Inbox",
    "outgoing_protocol": "microsoft_graph",
}


def test_a_microsoft_365_imap_integration_switches_to_graph_and_keeps_its_records(
    graph, dovecot, oauth_settings, client, admin_user, quiet
) -> None:
    imap = make_oauth_integration(oauth_server=oauth_settings, dovecot=dovecot, app_only=True)
    mailbox = imap.incoming_username
    dovecot.deliver(mailbox, make_email(subject="Scanner jammed"))
    assert run_pass(integration=imap).counts["created"] == 1, "read over IMAP first"
    old = ServiceRecord.objects.get()
    graph.add_mailbox(mailbox)
    client.force_login(admin_user)

    response = client.post(
        reverse("integrations:edit", args=[imap.pk]),
        form_data(imap, **GRAPH_FORM, outgoing_enabled=True, email_address=mailbox),
    )

    assert response.status_code == 302, page(response).text()
    switched = EmailIntegration.objects.get(pk=imap.pk)
    assert switched.uses_graph and switched.sends_with_graph
    assert not OAuthGrant.objects.get(integration=switched).access_token  # IMAP's, dropped
    graph.deliver(
        mailbox,
        [
            make_email(sender="Bob <bob@customer.test>", subject="Monitor flickers"),
            make_email(subject=f"Re: Scanner jammed [#{old.pk}]", body="Still jammed."),
        ],
    )

    report = run_pass(integration=switched)

    assert (report.counts["created"], report.counts["appended"]) == (1, 1), report.errors
    assert ServiceRecord.objects.count() == 2
    assert old.messages.filter(direction=Direction.INCOMING).count() == 2
    assert set(ServiceRecord.objects.values_list("source_integration", flat=True)) == {imap.pk}
    assert EmailIntegration.objects.count() == 1


def test_the_form_shows_graph_fields_by_protocol_classes(client, admin_user) -> None:
    client.force_login(admin_user)

    soup = page(client.get(reverse("integrations:new")))

    for name in ("incoming_server", "incoming_port", "incoming_encryption", "use_idle"):
        assert soup.select_one(f"#incoming-fields .not-graph #field-{name}") is not None
    assert soup.select_one("#incoming-fields .password-only #field-incoming_password")
    assert soup.select_one("#incoming-fields .graph-only #field-graph_processed_folder")
    for name in ("smtp_host", "smtp_port", "smtp_encryption", "smtp_username", "smtp_password"):
        assert soup.select_one(f"#outgoing-fields .smtp-only #field-{name}") is not None
    assert soup.select_one("#oauth-app .microsoft-only #field-oauth_tenant")
    assert soup.select_one("#oauth-app #field-oauth_client_id")
    assert soup.select_one("#oauth-app #field-oauth_access")
    options = [o["value"] for o in soup.select("#id_outgoing_protocol option")]
    assert options == ["smtp", "microsoft_graph"]
    setup = text_of(soup, "#oauth-app #graph-setup")
    for step in ("Mail.ReadWrite", "Mail.Send", "User.Read.All", "admin consent"):
        assert step in setup
    assert "New-ApplicationAccessPolicy" in setup
    assert "Connect with Microsoft again" in setup


def test_the_form_refuses_graph_sending_with_imap_reading(client, admin_user) -> None:
    client.force_login(admin_user)
    data = {
        "name": "Mixed",
        "incoming_enabled": "on",
        "incoming_protocol": "microsoft365",
        "oauth_mailbox_access": "imap",
        "oauth_access": "app",
        "oauth_tenant": "contoso.onmicrosoft.com",
        "oauth_client_id": "abc",
        "oauth_client_secret": "s",
        "incoming_encryption": "ssl",
        "incoming_username": "support@contoso.com",
        "incoming_folder": "INBOX",
        "poll_interval_seconds": "60",
        "outgoing_enabled": "on",
        "outgoing_protocol": "microsoft_graph",
        "email_address": "support@contoso.com",
        "smtp_encryption": "tls",
        "outgoing_encoding": "quoted-printable",
        "outgoing_content_type": "html",
        "outgoing_charset": "utf-8",
    }

    soup = page(client.post(reverse("integrations:new"), data))

    error = text_of(soup, "#field-outgoing_protocol .field-error")
    assert "Microsoft 365 (OAuth 2.0)" in error and "choose Microsoft 365 (Graph)" in error
    assert not EmailIntegration.objects.exists()

    data |= {"incoming_protocol": "microsoft_graph", "incoming_username": "support"}
    soup = page(client.post(reverse("integrations:new"), data))
    assert "Enter the address of the mailbox" in text_of(soup, "#field-incoming_username")


def test_graph_incoming_with_microsoft_s_smtp_is_refused(graph, acknowledgements_only) -> None:
    integration = make_graph_integration(graph)
    integration.outgoing_enabled = True
    integration.email_address = integration.incoming_username
    integration.smtp_host = "smtp.office365.com"

    with pytest.raises(Exception) as refused:
        integration.full_clean()

    assert "token cannot sign in to Microsoft's SMTP" in str(refused.value)


def test_sending_only_through_graph_needs_only_the_app(graph, acknowledgements_only) -> None:
    mailbox = "sender@desk.test"
    graph.add_mailbox(mailbox)
    app = graph.oauth.register_client("microsoft", app_mailbox=mailbox)
    graph.app(app.client_id).roles = {"Mail.Send"}
    integration = EmailIntegration(
        name="Sends only",
        outgoing_enabled=True,
        outgoing_protocol="microsoft_graph",
        email_address=mailbox,
        oauth_access="app",
        oauth_tenant=app.tenant,
        oauth_client_id=app.client_id,
        oauth_client_secret=app.secret,
    )
    integration.full_clean()
    integration.save()

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert outcome.ok, outcome.message
    assert graph.sent[-1][0] == mailbox


def test_export_and_import_keep_the_graph_settings(graph, graph_desk, tmp_path) -> None:
    integration = graph_desk(graph_processed_folder="Done/Imported", incoming_folder="Support")
    graph.add_folder(integration.incoming_username, "Support")
    out = tmp_path / "integrations.json"
    with out.open("w") as stream:
        call_command("integration", "export", integration.name, stdout=stream)
    exported = json.loads(out.read_text())[0]
    assert exported["incoming"]["protocol"] == "microsoft_graph"
    assert exported["incoming"]["graph_processed_folder"] == "Done/Imported"
    assert exported["outgoing"]["protocol"] == "microsoft_graph"
    assert exported["oauth"]["access"] == "app"
    assert exported["oauth"]["client_id"] == integration.oauth_client_id
    assert "client_secret" not in exported["oauth"]

    exported["name"] = "Copy"
    out.write_text(json.dumps([exported]))
    call_command("integration", "import", str(out))

    copy = EmailIntegration.objects.get(name="Copy")
    for name in (
        "incoming_protocol",
        "outgoing_protocol",
        "graph_processed_folder",
        "incoming_folder",
        "oauth_tenant",
        "oauth_client_id",
        "oauth_access",
        "email_address",
        "incoming_username",
    ):
        assert getattr(copy, name) == getattr(integration, name), name


def test_graph_incoming_sends_through_a_relay_without_a_graph_token(
    graph, smtp_server, acknowledgements_only
) -> None:
    """A Graph token has Graph's audience: SMTP never gets it as XOAUTH2. A relay that needs
    no login gets no AUTH at all."""
    integration = make_graph_integration(graph)
    integration.outgoing_enabled = True
    integration.email_address = integration.incoming_username
    integration.smtp_host = smtp_server.host
    integration.smtp_port = smtp_server.port_for("none")
    integration.smtp_encryption = "none"
    integration.full_clean()
    integration.save()
    smtp_server.clear()

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert outcome.ok, outcome.message
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ["jane@customer.test"]


def test_a_delegated_mailbox_sends_after_connecting(
    graph, client, admin_user, oauth_settings, acknowledgements_only
) -> None:
    client.force_login(admin_user)
    integration = make_graph_integration(graph, app_only=False)
    integration.outgoing_enabled = True
    integration.outgoing_protocol = "microsoft_graph"
    integration.email_address = integration.incoming_username
    integration.full_clean()
    integration.save()
    assert connect_with_test_client(client, integration, oauth_settings).status_code == 200
    integration = EmailIntegration.objects.get(pk=integration.pk)

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert outcome.ok, outcome.message
    assert graph.sent[-1][0] == integration.email_address
