"""The quarantine screens: admins list, view, download, reprocess and delete."""

from __future__ import annotations

import pytest
from django.test import Client

from mailworker.pipeline.process import marker_key
from records.models import ProcessedEmail, Quarantine, ServiceRecord
from tests.conftest import incoming_imap
from tests.mail import make_email

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry(make_integration) -> Quarantine:
    integration = make_integration(**incoming_imap())
    raw = make_email(subject="Kept <b>whole</b>", body="<script>alert(1)</script> hello")
    ProcessedEmail.objects.create(
        integration=integration, key=marker_key(raw), outcome="quarantined"
    )
    return Quarantine.objects.create(
        integration=integration,
        raw_email=raw,
        reason="processing failed: a bug",
        from_address="jane@customer.test",
        subject="Kept <b>whole</b>",
    )


def test_only_admins_with_permission_see_the_quarantine(
    client: Client, entry, make_staff, end_user
):
    assert client.get("/quarantine/").status_code == 302
    client.force_login(end_user)
    assert client.get("/quarantine/").status_code == 403
    client.force_login(make_staff("agent"))
    assert client.get(f"/quarantine/{entry.pk}/download/").status_code == 403


def test_list_and_view_escape_what_the_email_says(client: Client, entry, admin_user):
    client.force_login(admin_user)
    listing = client.get("/quarantine/").text
    assert "processing failed: a bug" in listing and "jane@customer.test" in listing
    page = client.get(f"/quarantine/{entry.pk}/").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_download_gives_the_raw_bytes(client: Client, entry, admin_user):
    client.force_login(admin_user)
    response = client.get(f"/quarantine/{entry.pk}/download/")
    assert response["Content-Type"] == "message/rfc822"
    assert f"quarantine-{entry.pk}.eml" in response["Content-Disposition"]
    assert response.content == bytes(entry.raw_email)


def test_reprocess_turns_it_into_a_record(client: Client, entry, admin_user):
    client.force_login(admin_user)
    response = client.post(f"/quarantine/{entry.pk}/reprocess/")
    assert response.status_code == 302
    assert not Quarantine.objects.exists()
    assert ServiceRecord.objects.get().title == "Kept <b>whole</b>"


def test_delete_needs_post_and_removes_it(client: Client, entry, admin_user):
    client.force_login(admin_user)
    assert client.get(f"/quarantine/{entry.pk}/delete/").status_code == 405
    client.post(f"/quarantine/{entry.pk}/delete/")
    assert not Quarantine.objects.exists()
