"""The agent's day in the record screens: a record opened by hand for a phone call, replies
with Cc, Bcc and attachments (received by the real aiosmtpd), internal notes, due dates and
"escalate now", the list's views, sorting, filters and bulk change, and merging two records
(an email to the old number lands in the kept one, through a real Dovecot and a worker pass).
"""

from __future__ import annotations

import email
from datetime import timedelta
from email.policy import default as default_policy
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from mailworker.delivery import send_due
from mailworker.models import NotificationSettings, OutboxEmail
from records.models import Direction, Message, Priority, ServiceRecord, Status, User
from records.selectors import existing_records, is_on_record
from records.services import (
    add_attachment,
    add_message,
    create_record,
    escalate_overdue_records,
    get_or_create_end_user,
    merge_records,
)
from tests.conftest import outgoing_smtp
from tests.desk import Desk
from tests.mail import make_email

pytestmark = pytest.mark.django_db

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


@pytest.fixture
def agent(make_agent) -> Any:
    return make_agent(
        "agent",
        "view_servicerecord",
        "add_servicerecord",
        "change_servicerecord",
        first_name="Alex",
        last_name="Agent",
    )


@pytest.fixture
def agent_client(client: Client, agent) -> Client:
    client.force_login(agent)
    return client


def new_record(title: str, email: str = "jane@customer.test", name: str = "Jane Doe"):
    requester, _ = get_or_create_end_user(email=email, display_name=name)
    record = create_record(title=title, description="", requester=requester)
    add_message(
        record=record,
        direction=Direction.INCOMING,
        from_address=email,
        subject=title,
        text_body=f"{title}: the first email",
        to_addresses=["support@desk.test"],
    )
    return record


def numbers_listed(response) -> list[int]:
    return [record.pk for record in response.context["records"]]


# Permissions ------------------------------------------------------------------------------


def test_each_agent_screen_needs_its_permission(client: Client, make_agent):
    record = new_record("Printer on fire")
    other = new_record("Printer still on fire")
    viewer = make_agent("viewer", "view_servicerecord")
    client.force_login(viewer)
    page = client.get(f"/records/{record.pk}/").text
    assert "Add note" not in page and "Escalate now" not in page and "Merge" not in page
    assert "New record" not in client.get("/records/").text
    assert client.get("/records/new/").status_code == 403
    posts = {
        "/records/new/": {"requester_email": "bob@customer.test", "title": "x"},
        f"/records/{record.pk}/note/": {"note": "secret"},
        f"/records/{record.pk}/due/": {"due_at": "2030-01-01T10:00"},
        f"/records/{record.pk}/escalate/": {},
        f"/records/{record.pk}/merge/": {"into": other.pk},
        "/records/bulk/": {"records": [record.pk], "bulk_assignee": "none"},
    }
    for path, data in posts.items():
        assert client.post(path, data).status_code == 403, path
    assert ServiceRecord.objects.count() == 2
    assert not Message.objects.filter(is_internal=True).exists()
    record.refresh_from_db()
    assert record.due_at is None and record.escalated_at is None and record.merged_into is None

    # Creating is its own permission: an agent who may change records may not open them.
    client.force_login(make_agent("changer", "view_servicerecord", "change_servicerecord"))
    assert client.get("/records/new/").status_code == 403
    client.force_login(make_agent("opener", "view_servicerecord", "add_servicerecord"))
    assert client.get("/records/new/").status_code == 200


# A record by hand ---------------------------------------------------------------------------


def new_record_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "requester_email": "bob@customer.test",
        "title": "Phone: laptop will not boot",
        "description": "Bob called at 9:10, the laptop shows a black screen.",
        "status": Status.objects.get(name="New").pk,
        "priority": Priority.HIGH,
        "category": "",
        "group": "",
        "assigned_admin": "",
        "due_at": "",
    }
    data.update(overrides)
    return data


def test_agent_opens_a_record_for_a_new_address_and_the_requester_is_told(
    agent_client: Client, agent, smtp_server, smtp_integration
):
    smtp_integration(encryption="tls", is_default=True)
    smtp_server.clear()
    response = agent_client.post(
        "/records/new/",
        new_record_form(assigned_admin=agent.pk, due_at="2030-05-01T16:30", notify_requester="on"),
        follow=True,
    )
    record = ServiceRecord.objects.get()
    assert response.redirect_chain == [(f"/records/{record.pk}/", 302)]
    assert f"Opened #{record.pk}. The requester&#x27;s acknowledgement is on its way" in (
        response.text
    )
    bob = record.requester
    # An end user, made as the mail engine makes one for an unknown sender.
    assert bob.email == "bob@customer.test" and not bob.is_staff
    assert not bob.has_usable_password()
    assert record.title == "Phone: laptop will not boot" and record.priority == Priority.HIGH
    assert record.assigned_admin == agent and record.status.name == "New"
    assert timezone.localtime(record.due_at).strftime("%Y-%m-%d %H:%M") == "2030-05-01 16:30"
    assert "black screen" in response.text

    send_due()
    (acknowledgement,) = [m for m in smtp_server.messages if "bob@customer.test" in m.rcpt_tos]
    parsed = email.message_from_bytes(acknowledgement.raw, policy=default_policy)
    assert f"#{record.pk}" in parsed["Subject"]


def test_a_record_for_an_existing_user_without_telling_them(agent_client: Client, end_user):
    NotificationSettings.objects.update_or_create(pk=1, defaults={"admins_on_created": False})
    response = agent_client.post(
        "/records/new/", new_record_form(requester_email="JANE@customer.test"), follow=True
    )
    assert response.status_code == 200
    record = ServiceRecord.objects.get()
    assert record.requester == end_user
    assert User.objects.filter(email__iexact="jane@customer.test").count() == 1
    assert not OutboxEmail.objects.exists()


def test_a_record_without_requester_or_title_says_what_is_missing(agent_client: Client):
    response = agent_client.post(
        "/records/new/", new_record_form(requester_email="not an address", title="  ")
    )
    assert response.status_code == 400
    assert "Enter a valid email address." in response.text
    assert "This field is required." in response.text
    assert not ServiceRecord.objects.exists()


# Replying with Cc, Bcc and attachments -----------------------------------------------------


def test_reply_with_cc_bcc_and_an_attachment_reaches_everyone_without_a_bcc_header(
    agent_client: Client, smtp_server, smtp_integration
):
    smtp_integration(encryption="tls", is_default=True)
    smtp_server.clear()
    record = new_record("Printer on fire")
    response = agent_client.post(
        f"/records/{record.pk}/reply/",
        {
            "body": "The report is attached.",
            "cc": "boss@customer.test; it@customer.test",
            "bcc": "auditor@partner.test",
            "attachments": [
                SimpleUploadedFile("report.pdf", PDF, content_type="application/pdf"),
                SimpleUploadedFile("notes.txt", b"line one\n", content_type="text/plain"),
            ],
        },
        follow=True,
    )
    assert f"Reply to #{record.pk} queued for sending." in response.text
    reply = record.messages.get(direction=Direction.OUTGOING)
    assert reply.cc_addresses == ["boss@customer.test", "it@customer.test"]
    assert reply.bcc_addresses == ["auditor@partner.test"]
    assert sorted(a.filename for a in reply.attachments.all()) == ["notes.txt", "report.pdf"]
    entry = response.text.split(f'id="message-{reply.pk}"')[1].split("</li>")[0]
    assert "boss@customer.test, it@customer.test" in entry
    assert "auditor@partner.test" in entry and "hidden from the recipients" in entry
    assert "report.pdf" in entry

    report = send_due()
    assert report.sent == 1
    (received,) = smtp_server.messages
    assert sorted(received.rcpt_tos) == sorted(
        ["jane@customer.test", "boss@customer.test", "it@customer.test", "auditor@partner.test"]
    )
    # The Bcc recipient got the very same bytes: no header anywhere names them.
    assert b"auditor@partner.test" not in received.raw
    parsed = email.message_from_bytes(received.raw, policy=default_policy)
    assert parsed["Bcc"] is None
    assert parsed["To"] == "jane@customer.test"
    assert parsed["Cc"] == "boss@customer.test, it@customer.test"
    files = {part.get_filename(): part for part in parsed.iter_attachments()}
    assert files["report.pdf"].get_content() == PDF
    assert files["report.pdf"].get_content_type() == "application/pdf"
    assert files["notes.txt"].get_content() == "line one\n"
    assert "The report is attached." in parsed.get_body(("plain",)).get_content()


def test_attachments_over_the_limit_are_refused_with_the_sizes(agent_client: Client, settings):
    settings.REPLY_ATTACHMENTS_MAX_BYTES = 1000
    record = new_record("Printer on fire")
    response = agent_client.post(
        f"/records/{record.pk}/reply/",
        {"body": "Here", "attachments": [SimpleUploadedFile("big.bin", b"x" * 1500)]},
    )
    assert response.status_code == 400
    assert "The attachments come to 1.5\xa0KB; a reply takes at most 1000\xa0bytes." in (
        response.text
    )
    assert not record.messages.filter(direction=Direction.OUTGOING).exists()


def test_a_wrong_cc_address_is_named(agent_client: Client):
    record = new_record("Printer on fire")
    response = agent_client.post(
        f"/records/{record.pk}/reply/", {"body": "Hi", "cc": "boss@customer.test, bob at home"}
    )
    assert response.status_code == 400
    assert "“bob” is not an email address." in response.text
    assert not record.messages.filter(direction=Direction.OUTGOING).exists()


# Internal notes ----------------------------------------------------------------------------


def test_an_internal_note_is_logged_for_staff_and_emailed_to_no_one(agent_client: Client, agent):
    NotificationSettings.objects.update_or_create(
        pk=1, defaults={"end_user_on_updated": True, "admins_on_updated": True}
    )
    record = new_record("Printer on fire")
    response = agent_client.post(
        f"/records/{record.pk}/note/", {"note": "Jane is the CEO's assistant."}, follow=True
    )
    assert "Internal note added (not emailed to anyone)." in response.text
    note = record.messages.get(is_internal=True)
    assert note.author == agent and note.text_body == "Jane is the CEO's assistant."
    assert not OutboxEmail.objects.exists()
    entry = response.text.split(f'id="message-{note.pk}"')[1].split("</li>")[0]
    assert 'data-internal="true"' in response.text.split(f'id="message-{note.pk}"')[1][:200]
    assert "Internal note — seen by staff only, never emailed" in entry

    assert agent_client.post(f"/records/{record.pk}/note/", {"note": " "}).status_code == 400


# Due date and escalation ---------------------------------------------------------------------


def test_due_date_set_and_removed(agent_client: Client):
    record = new_record("Printer on fire")
    response = agent_client.post(
        f"/records/{record.pk}/due/", {"due_at": "2030-01-02T09:15"}, follow=True
    )
    assert "Due 2030-01-02 09:15." in response.text
    record.refresh_from_db()
    assert timezone.localtime(record.due_at).strftime("%Y-%m-%d %H:%M") == "2030-01-02 09:15"
    response = agent_client.post(f"/records/{record.pk}/due/", {"due_at": ""}, follow=True)
    assert "Due date removed." in response.text
    record.refresh_from_db()
    assert record.due_at is None
    response = agent_client.post(f"/records/{record.pk}/due/", {"due_at": "next tuesday"})
    assert response.status_code == 400 and "Enter a valid date/time." in response.text


def test_escalate_now_tells_the_admins_once(
    agent_client: Client, agent, admin_user, make_integration
):
    make_integration(**outgoing_smtp(is_default=True))
    record = new_record("Printer on fire")
    response = agent_client.post(f"/records/{record.pk}/escalate/", follow=True)
    assert f"Escalated #{record.pk}: admins were told." in response.text
    record.refresh_from_db()
    assert record.escalated_at is not None
    # Nobody is assigned: every staff member who may view records hears of it, but the
    # agent who escalated it.
    (alert,) = OutboxEmail.objects.filter(record=record)
    assert alert.to_addresses == [admin_user.email]
    assert f"Service record #{record.pk} was escalated by Alex Agent" in alert.text_body
    assert "Escalated" in response.text.split('id="record-details"')[1].split("</dl>")[0]

    # The due-date task does not tell them a second time.
    ServiceRecord.objects.filter(pk=record.pk).update(due_at=timezone.now() - timedelta(hours=1))
    assert escalate_overdue_records() == 0

    record.status = Status.objects.get(name="Closed")
    record.save()
    response = agent_client.post(f"/records/{record.pk}/escalate/", follow=True)
    assert "A closed record is not escalated: reopen it first." in response.text


# The list ---------------------------------------------------------------------------------


def test_columns_sort_both_ways_and_keep_the_filters(agent_client: Client):
    b = new_record("Beta")
    a = new_record("Alpha")
    c = new_record("Gamma")
    ServiceRecord.objects.filter(pk=a.pk).update(priority=Priority.LOW, due_at=timezone.now())
    ServiceRecord.objects.filter(pk=c.pk).update(
        priority=Priority.HIGHEST, due_at=timezone.now() + timedelta(days=1)
    )
    assert numbers_listed(agent_client.get("/records/", {"sort": "title"})) == [a.pk, b.pk, c.pk]
    assert numbers_listed(agent_client.get("/records/", {"sort": "-title"})) == [c.pk, b.pk, a.pk]
    assert numbers_listed(agent_client.get("/records/", {"sort": "priority"})) == [
        c.pk,
        b.pk,
        a.pk,
    ]
    # No due date sorts last either way.
    assert numbers_listed(agent_client.get("/records/", {"sort": "due"})) == [a.pk, c.pk, b.pk]
    assert numbers_listed(agent_client.get("/records/", {"sort": "-due"})) == [c.pk, a.pk, b.pk]
    assert numbers_listed(agent_client.get("/records/", {"sort": "number"})) == [b.pk, a.pk, c.pk]
    # An unknown column is the default order, not an error.
    assert agent_client.get("/records/", {"sort": "password"}).status_code == 200

    page = agent_client.get("/records/", {"q": "a", "sort": "title"}).text
    assert 'aria-sort="ascending"' in page
    # The header of the sorted column turns the order round, keeping the search.
    assert 'href="?q=a&amp;sort=-title"' in page


def test_my_records_unassigned_and_filters(agent_client: Client, agent, make_agent):
    other = make_agent("other", "view_servicerecord")
    mine = new_record("Mine")
    theirs = new_record("Theirs")
    nobody = new_record("Nobody's")
    ServiceRecord.objects.filter(pk=mine.pk).update(assigned_admin=agent, priority=Priority.HIGH)
    ServiceRecord.objects.filter(pk=theirs.pk).update(
        assigned_admin=other, due_at=timezone.now() - timedelta(hours=2)
    )

    def listed(**params: Any) -> set[int]:
        return set(numbers_listed(agent_client.get("/records/", params)))

    assert listed(view="mine") == {mine.pk}
    assert listed(view="unassigned") == {nobody.pk}
    assert listed(priority=Priority.HIGH) == {mine.pk}
    assert listed(overdue="on") == {theirs.pk}
    ServiceRecord.objects.filter(pk=theirs.pk).update(status=Status.objects.get(name="Closed"))
    assert listed(overdue="on") == set()
    assert listed(state="closed") == {theirs.pk}
    assert listed(state="open") == {mine.pk, nobody.pk}
    page = agent_client.get("/records/", {"view": "mine"}).text
    assert '?view=mine" aria-current="page">My records' in page


def test_bulk_change_of_status_and_assignee(agent_client: Client, agent):
    first, second, third = new_record("One"), new_record("Two"), new_record("Three")
    in_progress = Status.objects.get(name="In Progress")
    response = agent_client.post(
        "/records/bulk/",
        {
            "records": [first.pk, second.pk],
            "bulk_status": in_progress.pk,
            "bulk_assignee": agent.pk,
            "back": "view=unassigned&sort=title",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/records/?view=unassigned&sort=title"
    for record in (first, second):
        record.refresh_from_db()
        assert record.status == in_progress and record.assigned_admin == agent
    third.refresh_from_db()
    assert third.status.name == "New" and third.assigned_admin is None
    page = agent_client.get(response["Location"]).text
    assert f"Changed 2 of 2 records: #{first.pk}, #{second.pk}." in page

    # Unassigning keeps the status.
    agent_client.post("/records/bulk/", {"records": [first.pk], "bulk_assignee": "none"})
    first.refresh_from_db()
    assert first.assigned_admin is None and first.status == in_progress

    response = agent_client.post("/records/bulk/", {"bulk_assignee": "none"})
    assert response.status_code == 400
    assert "Select the records to change (tick their boxes)." in response.text
    response = agent_client.post("/records/bulk/", {"records": [third.pk]})
    assert "Choose a status or an assigned admin to set." in response.text


# Merging ----------------------------------------------------------------------------------


def test_merge_moves_the_log_and_closes_the_merged_record(agent_client: Client, agent):
    kept = new_record("Printer on fire")
    merged = new_record("Printer smoking", email="bob@customer.test", name="Bob Builder")
    attachment = add_attachment(
        message=merged.messages.get(), filename="photo.png", content_type="image/png", content=b"x"
    )
    response = agent_client.post(f"/records/{merged.pk}/merge/", {"into": kept.pk}, follow=True)
    assert response.redirect_chain == [(f"/records/{kept.pk}/", 302)]
    assert f"Merged #{merged.pk} into #{kept.pk}" in response.text
    merged.refresh_from_db()
    assert merged.merged_into == kept and merged.status.is_closed
    assert not merged.messages.exists()
    log = response.text.split('id="message-log"')[1].split("</ol>")[0]
    assert "Printer smoking: the first email" in log and "photo.png" in log
    assert f"Merged #{merged.pk} into this record" in log
    attachment.refresh_from_db()
    assert attachment.message.record == kept

    # The merged record's page says where it went.
    response = agent_client.get(f"/records/{merged.pk}/", follow=True)
    assert response.redirect_chain == [(f"/records/{kept.pk}/", 302)]
    assert f"#{merged.pk} was merged into #{kept.pk}" in response.text
    # Nothing more is written into it.
    assert agent_client.post(f"/records/{merged.pk}/note/", {"note": "x"}).status_code == 403


def test_merge_refuses_itself_a_merged_record_and_a_missing_one(agent_client: Client):
    kept, merged, third = new_record("A"), new_record("B"), new_record("C")
    response = agent_client.post(f"/records/{kept.pk}/merge/", {"into": kept.pk})
    assert response.status_code == 400
    assert "A record cannot be merged into itself." in response.text
    response = agent_client.post(f"/records/{kept.pk}/merge/", {"into": 999999})
    assert "There is no record #999999." in response.text
    agent_client.post(f"/records/{merged.pk}/merge/", {"into": kept.pk})
    response = agent_client.post(f"/records/{third.pk}/merge/", {"into": merged.pk})
    assert response.status_code == 400
    assert f"#{merged.pk} was itself merged into #{kept.pk}: merge into #{kept.pk}" in (
        response.text
    )
    third.refresh_from_db()
    assert third.merged_into is None


def test_a_merged_number_names_the_kept_record_and_chains_are_bounded(agent):
    a, b, c = new_record("A"), new_record("B"), new_record("C")
    merge_records(kept=b, merged=a, actor=agent)
    merge_records(kept=c, merged=b, actor=agent)
    # Merging B re-pointed A at C: one step.
    a.refresh_from_db()
    assert a.merged_into == c
    assert existing_records(numbers=[a.pk, b.pk, c.pk]) == {a.pk: c, b.pk: c, c.pk: c}
    # A cycle written behind the services' back ends where it started, never loops.
    ServiceRecord.objects.filter(pk=c.pk).update(merged_into=a)
    resolved = existing_records(numbers=[a.pk])
    assert resolved[a.pk].pk in {a.pk, c.pk}


def test_the_merged_requester_may_write_into_the_kept_record(agent):
    kept = new_record("Printer on fire")
    merged = new_record("Printer smoking", email="bob@customer.test")
    assert not is_on_record(record=kept, address="bob@customer.test")
    merge_records(kept=kept, merged=merged, actor=agent)
    assert is_on_record(record=kept, address="BOB@customer.test")
    assert not is_on_record(record=kept, address="mallory@customer.test")


@pytest.fixture
def desk(dovecot, dovecot_integration, smtp_server, smtp_integration, quiet) -> Desk:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    smtp_server.clear()
    return Desk(dovecot, smtp_server, mailbox)


def test_an_email_to_the_old_number_lands_in_the_kept_record(desk: Desk, agent):
    desk.receive(make_email(sender="Jane Doe <jane@customer.test>", subject="Printer on fire"))
    desk.receive(make_email(sender="Bob <bob@customer.test>", subject="Printer smoking"))
    kept = ServiceRecord.objects.get(requester__email="jane@customer.test")
    merged = ServiceRecord.objects.get(requester__email="bob@customer.test")
    merge_records(kept=kept, merged=merged, actor=agent)

    desk.receive(
        make_email(
            sender="Bob <bob@customer.test>",
            subject=f"Re: Printer smoking [#{merged.pk}]",
            body="It stopped smoking.",
        )
    )
    assert ServiceRecord.objects.count() == 2
    answer = kept.messages.get(text_body__contains="It stopped smoking.")
    assert not answer.is_internal and answer.direction == Direction.INCOMING
    assert not merged.messages.exists()
