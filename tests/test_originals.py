"""The original of every incoming email is kept, on a real Dovecot: byte for byte what was
delivered, downloaded as an agent from the record and the quarantine; what a limit cut is
said on the record; an email over the size limit is kept whole; retention deletes old ones."""

from __future__ import annotations

import gzip
import hashlib
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
import zstandard
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from mailworker.pipeline.passes import run_pass
from records.models import DeskSettings, Message, Original, ProcessedEmail, Quarantine
from records.originals import delete_expired, read_original, store_bytes
from tests.conftest import ADMIN_PASSWORD
from tests.mail import make_email

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024


def fingerprint(data: bytes) -> tuple[int, str]:
    """Size and SHA-256: large emails compared byte for byte, with a failure that reads in a
    line (pytest's diff of two 30 MB byte strings takes minutes)."""
    return len(data), hashlib.sha256(data).hexdigest()


def crlf(message: EmailMessage) -> bytes:
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.fixture
def agent(django_user_model):
    user = django_user_model.objects.create_user(
        username="agent", email="agent@desk.test", password=ADMIN_PASSWORD, is_staff=True
    )
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="records",
            codename__in=["view_servicerecord", "view_quarantine"],
        )
    )
    return user


def download(client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response
    assert response["Content-Type"] == "message/rfc822"
    assert response["Content-Disposition"].startswith("attachment;")
    return b"".join(response.streaming_content)


def test_originals_of_a_created_record_and_an_appended_message_are_byte_identical(
    dovecot, dovecot_integration, client, agent
):
    integration = dovecot_integration()
    first = make_email(subject="Printer broken")
    dovecot.deliver(integration.incoming_username, [first])
    assert run_pass(integration=integration).counts["created"] == 1
    record_id = Message.objects.get().record_id
    reply = make_email(
        subject=f"Re: #{record_id} Printer broken",
        body="Still broken.",
        attachments=[("log.bin", "application/octet-stream", bytes(range(256)) * 40)],
    )
    dovecot.deliver(integration.incoming_username, [reply])
    assert run_pass(integration=integration).counts["appended"] == 1

    created, appended = Message.objects.filter(direction="in").order_by("pk")
    for message, raw in ((created, first), (appended, reply)):
        assert message.original is not None
        assert message.original.size == len(raw)
        assert message.original.stored_size < len(raw) or len(raw) < 2000
        # A Zstandard frame of a pack, in the storage the desk uses for attachments.
        assert message.original.file.name.startswith("originals/")
        with default_storage.open(message.original.file.name) as stored:
            frame = stored.read()[message.original.offset :][: message.original.stored_size]
            assert zstandard.ZstdDecompressor().decompress(frame) == raw
        log = ProcessedEmail.objects.get(record=message.record, original=message.original)
        assert log.outcome in ("created", "appended")

        client.force_login(agent)
        page = client.get(reverse("records:detail", args=[message.record_id])).content.decode()
        url = reverse("records:original", args=[message.pk])
        assert url in page and "Show original" in page
        assert download(client, url) == raw


def test_a_quarantined_email_keeps_its_original(dovecot, dovecot_integration, client, agent):
    integration = dovecot_integration()
    raw = make_email(sender="Undisclosed", subject="No sender at all")
    dovecot.deliver(integration.incoming_username, [raw])
    report = run_pass(integration=integration)
    assert report.counts["quarantined"] == 1, report.counts
    entry = Quarantine.objects.get()
    assert entry.original is not None
    assert ProcessedEmail.objects.get().original == entry.original
    client.force_login(agent)
    page = client.get(reverse("quarantine:detail", args=[entry.pk])).content.decode()
    assert "Show original" in page
    assert download(client, reverse("quarantine:download", args=[entry.pk])) == raw


def test_two_thousand_attachments_the_record_says_how_many_are_not_shown(
    dovecot, dovecot_integration, client, agent
):
    integration = dovecot_integration()
    message = EmailMessage()
    message["From"] = "Jane Doe <jane@customer.test>"
    message["To"] = "support@desk.test"
    message["Subject"] = "Two thousand files"
    message["Message-ID"] = make_msgid(domain="customer.test")
    message.set_content("See the files.")
    for number in range(2000):
        message.add_attachment(
            f"file {number}".encode(),
            maintype="application",
            subtype="octet-stream",
            filename=f"f{number}.bin",
        )
    raw = crlf(message)
    dovecot.deliver(integration.incoming_username, [raw])
    assert run_pass(integration=integration).counts["created"] == 1
    logged = Message.objects.get(direction="in")
    shown = logged.attachments.count()
    assert shown < 2000
    expected = f"{2000 - shown} attachments not shown: see the original"
    assert expected in logged.defects
    # The parser's own notes are kept too.
    assert any("MIME parts" in line and "see the original" not in line for line in logged.defects)
    client.force_login(agent)
    page = client.get(reverse("records:detail", args=[logged.record_id])).content.decode()
    assert expected in page
    original = download(client, reverse("records:original", args=[logged.pk]))
    assert fingerprint(original) == fingerprint(raw)
    assert original.count(b'filename="f1999.bin"') == 1


def test_a_hundred_deep_nesting_keeps_the_text_at_the_bottom_in_the_original(
    dovecot, dovecot_integration
):
    integration = dovecot_integration()
    inner = EmailMessage()
    inner.set_content("The text at the very bottom.")
    for depth in range(100):
        outer = EmailMessage()
        outer.make_mixed()
        outer.attach(inner)
        inner = outer
        inner.set_boundary(f"level-{depth}")
    inner["From"] = "Jane Doe <jane@customer.test>"
    inner["To"] = "support@desk.test"
    inner["Subject"] = "Deep"
    inner["Message-ID"] = make_msgid(domain="customer.test")
    raw = crlf(inner)
    dovecot.deliver(integration.incoming_username, [raw])
    report = run_pass(integration=integration)
    assert report.counts["created"] + report.counts["quarantined"] == 1, report.counts
    original = Original.objects.get()
    assert fingerprint(read_original(original)) == fingerprint(raw)
    assert b"The text at the very bottom." in read_original(original)
    logged = Message.objects.filter(direction="in").first()
    if logged is not None:
        assert logged.original == original
        assert any("see the original" in line for line in logged.defects)


def test_an_email_over_the_size_limit_is_stored_whole_and_quarantined(
    dovecot, dovecot_integration, client, agent, settings
):
    settings.MAX_INCOMING_EMAIL_BYTES = 25 * MiB
    integration = dovecot_integration()
    payload = bytes((n * 7919) % 251 for n in range(30 * MiB // 4 * 3))
    raw = make_email(
        subject="Thirty megabytes",
        attachments=[("big.bin", "application/octet-stream", payload)],
    )
    assert len(raw) > 30 * MiB
    dovecot.deliver(integration.incoming_username, [raw])
    report = run_pass(integration=integration)
    assert report.counts["quarantined"] == 1, report
    assert dovecot.count(integration.incoming_username) == 0
    entry = Quarantine.objects.get()
    assert entry.subject == "Thirty megabytes"  # its headers parsed
    assert "kept whole" in entry.reason
    assert entry.original is not None and entry.original.size == len(raw)
    client.force_login(agent)
    assert fingerprint(
        download(client, reverse("quarantine:download", args=[entry.pk]))
    ) == fingerprint(raw)


def test_retention_deletes_old_originals_and_log_rows_and_keeps_new_ones(
    dovecot, dovecot_integration
):
    integration = dovecot_integration()
    raws = [make_email(subject=f"n{n}") for n in (1, 2)]
    dovecot.deliver(integration.incoming_username, raws)
    run_pass(integration=integration)
    old, new = Original.objects.order_by("pk")
    old_log = ProcessedEmail.objects.get(original=old)
    settings_row = DeskSettings.current()
    settings_row.originals_retention_days = 30
    settings_row.save()
    long_ago = timezone.now() - timedelta(days=31)
    Original.objects.filter(pk=old.pk).update(received_at=long_ago)
    ProcessedEmail.objects.filter(pk=old_log.pk).update(processed_at=long_ago)
    # An orphan of a crash between writing a file and the commit, long ago.
    orphan = store_bytes(b"Subject: orphan\r\n\r\nx\r\n", received_at=long_ago)

    deleted = delete_expired()

    assert deleted["originals"] == 1 and deleted["log_rows"] == 1
    assert not Original.objects.filter(pk=old.pk).exists()
    assert not default_storage.exists(orphan.name)
    assert not ProcessedEmail.objects.filter(pk=old_log.pk).exists()
    assert Original.objects.filter(pk=new.pk).exists()
    assert default_storage.exists(new.file.name)
    assert read_original(Original.objects.get(pk=new.pk)) == raws[1]
    assert ProcessedEmail.objects.filter(original=new).exists()
    # The message that linked the old original remains, without it.
    assert Message.objects.filter(direction="in", original__isnull=True).count() == 1

    # One pass wrote both into one pack: it goes with the last row that points into it.
    assert old.file.name == new.file.name
    Original.objects.filter(pk=new.pk).update(received_at=long_ago)
    assert delete_expired()["originals"] == 1
    assert not default_storage.exists(new.file.name)


def test_an_original_stored_as_gzip_by_the_first_version_is_still_served(
    client, agent, dovecot, dovecot_integration
):
    integration = dovecot_integration()
    raw = make_email(subject="kept as gzip")
    dovecot.deliver(integration.incoming_username, [raw])
    run_pass(integration=integration)
    message = Message.objects.get(direction="in")
    legacy = default_storage.save(
        "originals/2026/01/02/legacy.eml.gz", ContentFile(gzip.compress(raw))
    )
    Original.objects.filter(pk=message.original_id).update(file=legacy, offset=0)

    client.force_login(agent)
    assert download(client, reverse("records:original", args=[message.pk])) == raw


def test_downloading_an_original_needs_login_and_the_view_permission(
    dovecot, dovecot_integration, client, django_user_model
):
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, [make_email()])
    run_pass(integration=integration)
    message = Message.objects.get(direction="in")
    url = reverse("records:original", args=[message.pk])
    response = client.get(url)
    assert response.status_code == 302 and "/login/" in response["Location"]
    nobody = django_user_model.objects.create_user(
        username="nobody", password=ADMIN_PASSWORD, is_staff=True
    )
    client.force_login(nobody)
    assert client.get(url).status_code == 403


def test_desk_settings_screen_sets_the_retention_within_bounds(client, django_user_model):
    admin = django_user_model.objects.create_user(
        username="boss", password=ADMIN_PASSWORD, is_staff=True
    )
    admin.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="records",
            codename__in=["view_desksettings", "change_desksettings"],
        )
    )
    client.force_login(admin)
    url = reverse("desk-settings")
    assert client.get(url).status_code == 200
    assert client.post(url, {"originals_retention_days": "0"}).status_code == 400
    assert client.post(url, {"originals_retention_days": "3651"}).status_code == 400
    assert client.post(url, {"originals_retention_days": "365"}).status_code == 302
    assert DeskSettings.current().originals_retention_days == 365


def test_pop3_streams_an_oversized_email_whole_into_its_original(
    dovecot, dovecot_integration, settings
):
    settings.MAX_INCOMING_EMAIL_BYTES = 1 * MiB
    integration = dovecot_integration(protocol="pop3")
    raw = make_email(
        subject="Three megabytes",
        body=".a line that starts with a dot\r\n..and two",
        attachments=[("big.bin", "application/octet-stream", bytes(range(256)) * 9000)],
    )
    dovecot.deliver(integration.incoming_username, [raw])
    report = run_pass(integration=integration)
    assert report.counts["quarantined"] == 1, report
    entry = Quarantine.objects.get()
    assert "kept whole" in entry.reason
    assert fingerprint(read_original(entry.original)) == fingerprint(raw)


def test_graph_streams_an_oversized_email_whole_into_its_original(graph, settings):
    from tests.graph_helpers import make_graph_integration

    settings.MAX_INCOMING_EMAIL_BYTES = 64 * 1024
    integration = make_graph_integration(graph)
    big = make_email(
        subject="Huge scan",
        attachments=[("scan.pdf", "application/pdf", b"%PDF" + b"x" * 400_000)],
    )
    graph.deliver(integration.incoming_username, [big])
    report = run_pass(integration=integration)
    assert report.counts["quarantined"] == 1, report
    entry = Quarantine.objects.get()
    assert entry.subject == "Huge scan"
    assert fingerprint(read_original(entry.original)) == fingerprint(big)
