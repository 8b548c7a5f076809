"""The incoming email log (issue 13, part 2): one row per email an integration fetched,
whatever became of it, through a real mailbox (Dovecot) and a pass; the screen that lists
and filters it, paged at 100,000 rows; the quarantine's "create a record anyway" and
"add to #N", both at the time the email arrived."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.utils import timezone

from integrations.models import EmailIntegration, StrangerPolicy
from mailworker.headers import LOOP_HEADER
from mailworker.incoming_log import log_rows, page_of
from mailworker.pipeline.passes import run_pass
from records.models import Message, ProcessedEmail, Quarantine, ServiceRecord
from tests.mail import make_email

pytestmark = pytest.mark.django_db
Outcome = ProcessedEmail.Outcome
STRANGER = "Mallory <mallory@attacker.test>"


@pytest.fixture
def desk(dovecot, dovecot_integration):
    class Desk:
        integration: EmailIntegration = dovecot_integration(protocol="imap", encryption="ssl")

        def receive(self, *raws: bytes):
            dovecot.deliver(self.integration.incoming_username, list(raws))
            report = run_pass(integration=self.integration)
            assert not report.failed, report.errors
            return report

        def configure(self, **fields) -> None:
            EmailIntegration.objects.filter(pk=self.integration.pk).update(**fields)
            self.integration.refresh_from_db()

    return Desk()


def row_of(raw_subject: str) -> ProcessedEmail:
    (row,) = ProcessedEmail.objects.filter(subject=raw_subject)
    return row


def open_record(desk) -> ServiceRecord:
    desk.receive(make_email(subject="Printer broken"))
    return ServiceRecord.objects.get(title="Printer broken")


def test_a_created_and_an_appended_email_are_logged_with_their_record(desk) -> None:
    raw = make_email(subject="Printer broken")
    desk.receive(raw)
    record = ServiceRecord.objects.get()
    created = row_of("Printer broken")
    assert (created.outcome, created.record_id) == (Outcome.CREATED, record.pk)
    assert created.from_address == "jane@customer.test"
    assert created.size == len(raw)
    assert created.integration_id == desk.integration.pk

    desk.receive(make_email(subject=f"Re: [#{record.pk}] Printer broken", body="Still."))
    appended = row_of(f"Re: [#{record.pk}] Printer broken")
    assert (appended.outcome, appended.record_id) == (Outcome.APPENDED, record.pk)
    assert "thread" in appended.reason or "subject" in appended.reason
    assert ProcessedEmail.objects.count() == 2


def test_an_email_dropped_by_the_ignore_list_names_the_rule(desk) -> None:
    desk.configure(ignore_senders=["spam.test"])
    desk.receive(make_email(sender="ads@spam.test", subject="Cheap"))
    row = row_of("Cheap")
    assert row.outcome == Outcome.IGNORED
    assert row.reason == "sender ads@spam.test is on the ignore list"
    assert row.from_address == "ads@spam.test"
    assert row.record_id is None and not ServiceRecord.objects.exists()


def test_a_duplicate_links_the_email_it_duplicates(desk) -> None:
    first = make_email(subject="Twice", body="Same words.")
    desk.receive(first)
    original = row_of("Twice")
    # Again in a later pass (the chunk reads the marker), then twice in one pass (the chunk
    # notes the first one's marker).
    desk.receive(make_email(subject="Twice", body="Same words."))
    desk.receive(
        make_email(subject="Thrice", body="Other words."),
        make_email(subject="Thrice", body="Other words."),
    )
    later = ProcessedEmail.objects.filter(subject="Twice").exclude(pk=original.pk).get()
    assert later.outcome == Outcome.DUPLICATE
    assert later.duplicate_of_id == original.pk
    assert "last 1,000" in later.reason
    thrice = list(ProcessedEmail.objects.filter(subject="Thrice").order_by("id"))
    assert [row.outcome for row in thrice] == [Outcome.CREATED, Outcome.DUPLICATE]
    assert thrice[1].duplicate_of_id == thrice[0].pk


def test_the_loop_guard_is_logged_as_a_loop(desk) -> None:
    report = desk.receive(make_email(subject="Echo", headers={LOOP_HEADER: "1"}))
    row = row_of("Echo")
    assert row.outcome == Outcome.LOOP
    assert LOOP_HEADER in row.reason
    assert report.counts["ignored"] == 1  # the pass still counts it as dropped


def test_a_quarantined_email_links_its_quarantine_entry(desk) -> None:
    record = open_record(desk)
    desk.configure(stranger_policy=StrangerPolicy.QUARANTINE)
    desk.receive(make_email(sender=STRANGER, subject=f"Re: #{record.pk} hello"))
    row = row_of(f"Re: #{record.pk} hello")
    entry = Quarantine.objects.get()
    assert (row.outcome, row.quarantine_id) == (Outcome.QUARANTINED, entry.pk)
    assert (
        row.reason == entry.reason == f"sender mallory@attacker.test is not on record #{record.pk}"
    )
    assert row.from_address == "mallory@attacker.test"


def test_a_stranger_s_internal_note_is_logged_as_a_note(desk) -> None:
    record = open_record(desk)
    desk.configure(stranger_policy=StrangerPolicy.INTERNAL_NOTE)
    desk.receive(make_email(sender=STRANGER, subject=f"Re: #{record.pk} psst"))
    row = row_of(f"Re: #{record.pk} psst")
    assert (row.outcome, row.record_id) == (Outcome.NOTE, record.pk)
    assert "not a participant" in row.reason
    assert record.messages.filter(is_internal=True).count() == 1


def test_the_flood_limit_is_logged_as_flood_with_its_quarantine_entry(desk, settings) -> None:
    settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR = 2
    desk.receive(
        *[make_email(sender=STRANGER, subject=f"Invoice {n}", body=f"Pay {n}") for n in range(4)]
    )
    rows = list(ProcessedEmail.objects.filter(subject__startswith="Invoice").order_by("id"))
    assert [row.outcome for row in rows] == [Outcome.CREATED] * 2 + [Outcome.FLOOD] * 2
    for row in rows[2:]:
        entry = Quarantine.objects.get(pk=row.quarantine_id)
        assert entry.flood_key == "sender:mallory@attacker.test"
        assert row.reason == entry.reason


def test_an_oversized_email_is_logged_at_its_full_size(desk, settings) -> None:
    settings.MAX_INCOMING_EMAIL_BYTES = 50_000
    raw = make_email(subject="Huge", body="x" * 120_000)
    desk.receive(raw)
    row = row_of("Huge")
    assert row.size == len(raw)
    assert row.from_address == "jane@customer.test"


# The screen -------------------------------------------------------------------------------


@pytest.fixture
def log_reader(make_staff):
    user = make_staff("reader")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="records", codename="view_processedemail")
    )
    return user


def test_the_screen_needs_the_permission(client: Client, make_staff, log_reader) -> None:
    assert client.get("/incoming/").status_code == 302
    client.force_login(make_staff("agent"))
    assert client.get("/incoming/").status_code == 403
    assert "Incoming log" not in client.get("/").text
    client.force_login(log_reader)
    assert client.get("/incoming/").status_code == 200
    assert 'href="/incoming/"' in client.get("/incoming/").text  # the nav link


def test_the_screen_lists_filters_and_links_every_outcome(
    client: Client, desk, log_reader, settings
) -> None:
    record = open_record(desk)
    desk.configure(ignore_senders=["spam.test"], stranger_policy=StrangerPolicy.QUARANTINE)
    desk.receive(
        make_email(sender="ads@spam.test", subject="Cheap"),
        make_email(sender=STRANGER, subject=f"Re: #{record.pk} hi"),
        make_email(subject="Printer broken"),  # a duplicate of the first
    )
    entry = Quarantine.objects.get()
    first = row_of("Cheap")
    client.force_login(log_reader)

    page = client.get("/incoming/").text
    assert page.index(f"Re: #{record.pk} hi") < page.index("Cheap")  # newest first
    assert f'href="/records/{record.pk}/">#{record.pk}</a>' in page
    assert f'href="/quarantine/{entry.pk}/"' in page
    duplicate = ProcessedEmail.objects.get(outcome=Outcome.DUPLICATE)
    assert f'href="/incoming/?id={duplicate.duplicate_of_id}"' in page
    assert "sender ads@spam.test is on the ignore list" in page

    def shown(**query) -> set[int]:
        response = client.get("/incoming/", query)
        assert response.status_code == 200
        return {row.pk for row in response.context["rows"]}

    assert shown(outcome="ignored") == {first.pk}
    assert shown(sender="SPAM.test") == {first.pk}
    assert shown(subject="hi", outcome="quarantined") == {entry_row(entry).pk}
    assert len(shown(integration=desk.integration.pk)) == 4
    today = timezone.localdate()
    assert len(shown(date_from=today.isoformat(), date_to=today.isoformat())) == 4
    assert shown(date_from=(today + timedelta(days=1)).isoformat()) == set()
    assert shown(id=duplicate.duplicate_of_id) == {duplicate.duplicate_of_id}
    other = EmailIntegration.objects.create(name="Other", incoming_enabled=False)
    assert shown(integration=other.pk) == set()


def entry_row(entry: Quarantine) -> ProcessedEmail:
    return ProcessedEmail.objects.get(quarantine=entry)


def test_the_integration_page_links_to_its_log(client: Client, desk, admin_user) -> None:
    client.force_login(admin_user)
    link = f"/incoming/?integration={desk.integration.pk}"
    assert link in client.get(f"/settings/email/{desk.integration.pk}/").text
    assert link in client.get("/settings/email/").text


def test_100000_rows_page_with_bounded_queries(
    client: Client, log_reader, make_integration, django_assert_max_num_queries
) -> None:
    integration = make_integration()
    ProcessedEmail.objects.bulk_create(
        (
            ProcessedEmail(
                integration=integration,
                key=f"{n:064d}",
                outcome=Outcome.CREATED if n % 3 else Outcome.IGNORED,
                from_address=f"user{n % 500}@customer.test",
                subject=f"Email {n}",
                size=1000 + n,
            )
            for n in range(100_000)
        ),
        batch_size=5000,
    )
    client.force_login(log_reader)
    client.get("/incoming/")  # the session and permissions, read once
    with django_assert_max_num_queries(8):
        first = client.get("/incoming/")
    assert first.status_code == 200 and len(first.context["rows"]) == 50
    cursor = first.context["next_cursor"]
    # Far down the log: as many queries as the first page, and the next 50 rows.
    for _ in range(3):
        with django_assert_max_num_queries(8):
            response = client.get("/incoming/", {"after": cursor, "outcome": "created"})
        rows = response.context["rows"]
        assert len(rows) == 50 and all(row.outcome == Outcome.CREATED for row in rows)
        cursor = response.context["next_cursor"]
    newest = log_rows().order_by("-processed_at", "-id")[:50]
    assert [row.pk for row in first.context["rows"]] == [row.pk for row in newest]
    # Page through to the end: each row exactly once.
    seen, cursor, pages = 0, "", 0
    while True:
        page = page_of(log_rows().filter(subject__startswith="Email 9999"), cursor=cursor)
        seen += len(page.rows)
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == 11 and pages == 1
    # The page's query reads the index on processed_at, not a sort of the whole log.
    query = str(log_rows().order_by("-processed_at", "-id")[:51].query)
    with connection.cursor() as cursor_:
        if connection.vendor == "sqlite":
            cursor_.execute(f"EXPLAIN QUERY PLAN {query}")
            plan = " ".join(str(row) for row in cursor_.fetchall())
            assert "USING INDEX processed_at" in plan and "FOR ORDER BY" not in plan, plan
        else:
            cursor_.execute(f"EXPLAIN {query}")
            plan = " ".join(str(row) for row in cursor_.fetchall())
            assert "Index Scan using processed_at" in plan, plan
            assert "Seq Scan on records_processedemail" not in plan, plan


# Quarantine's reprocess -------------------------------------------------------------------


def quarantined_stranger(desk) -> tuple[ServiceRecord, Quarantine]:
    record = open_record(desk)
    desk.configure(stranger_policy=StrangerPolicy.QUARANTINE)
    desk.receive(make_email(sender=STRANGER, subject=f"Re: #{record.pk} late", body="Later."))
    entry = Quarantine.objects.get()
    arrived = timezone.now() - timedelta(days=2)
    Quarantine.objects.filter(pk=entry.pk).update(received_at=arrived)
    entry.refresh_from_db()
    return record, entry


def test_create_a_record_anyway_keeps_the_arrival_time(client: Client, desk, admin_user):
    record, entry = quarantined_stranger(desk)
    client.force_login(admin_user)
    assert "Create a record anyway" in client.get(f"/quarantine/{entry.pk}/").text
    response = client.post(f"/quarantine/{entry.pk}/reprocess/", {"how": "create"})
    assert response.status_code == 302
    assert not Quarantine.objects.exists()
    new = ServiceRecord.objects.exclude(pk=record.pk).get()
    assert new.requester.email == "mallory@attacker.test"
    assert new.created_at == entry.received_at
    (message,) = new.messages.all()
    assert message.created_at == entry.received_at
    row = row_of(f"Re: #{record.pk} late")
    assert (row.outcome, row.record_id) == (Outcome.CREATED, new.pk)
    assert row.reason == "created anyway by an admin"
    assert record.messages.count() == 1  # the record it named is untouched


def test_add_to_a_record_keeps_the_arrival_time(client: Client, desk, admin_user):
    record, entry = quarantined_stranger(desk)
    client.force_login(admin_user)
    response = client.post(
        f"/quarantine/{entry.pk}/reprocess/", {"how": "add", "record": "#999999"}
    )
    assert response.status_code == 302 and Quarantine.objects.filter(pk=entry.pk).exists()
    response = client.post(
        f"/quarantine/{entry.pk}/reprocess/", {"how": "add", "record": str(record.pk)}
    )
    assert response.status_code == 302
    assert not Quarantine.objects.exists()
    assert ServiceRecord.objects.count() == 1
    added = record.messages.filter(direction="in").order_by("id").last()
    assert added.from_address == "mallory@attacker.test" and not added.is_internal
    assert added.created_at == entry.received_at
    row = row_of(f"Re: #{record.pk} late")
    assert (row.outcome, row.record_id) == (Outcome.APPENDED, record.pk)
    assert row.reason == f"added to #{record.pk} by an admin"
    assert Message.objects.filter(record=record).count() == 2


def test_reprocess_held_again_keeps_the_arrival_time(client: Client, desk, admin_user):
    record, entry = quarantined_stranger(desk)
    client.force_login(admin_user)
    client.post(f"/quarantine/{entry.pk}/reprocess/")
    again = Quarantine.objects.get()
    assert again.pk != entry.pk and again.received_at == entry.received_at
    row = row_of(f"Re: #{record.pk} late")
    assert (row.outcome, row.quarantine_id) == (Outcome.QUARANTINED, again.pk)
