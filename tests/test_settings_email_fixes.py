"""Settings > Email through HTTP: the default integration sends, the copy and forward targets
refuse the desk's own addresses, overlapping sender lists are warned about, a failed Apply
is summed up at the top, and a Test is run once (POST/redirect/GET)."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from integrations.models import EmailIntegration
from tests.conftest import incoming_imap, outgoing_smtp
from tests.test_connection_tests import page, text_of
from tests.test_settings_email_screens import SENDS_FORM, form_data

pytestmark = pytest.mark.django_db

NEW = "/settings/email/new/"


def edit_url(integration: EmailIntegration) -> str:
    return f"/settings/email/{integration.pk}/"


def messages_of(response) -> list[tuple[str, str]]:
    return [(message.level_tag, str(message)) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def admin_client(client: Client, admin_user) -> Client:
    client.force_login(admin_user)
    return client


# The default integration -----------------------------------------------------------------


def test_an_integration_that_only_reads_is_refused_as_the_default(
    admin_client: Client, make_integration
) -> None:
    main = make_integration(**outgoing_smtp(name="Main"))

    response = admin_client.post(NEW, form_data(name="Reader", is_default="on"))

    assert response.status_code == 400
    soup = page(response)
    error = text_of(soup, "#field-is_default .field-error")
    assert "must have Outgoing Emails on" in error
    assert soup.select_one("#error-summary a")["href"] == "#field-is_default"
    assert not EmailIntegration.objects.filter(name="Reader").exists()
    main.refresh_from_db()
    assert main.is_default


def test_unticking_the_default_says_it_stays_the_default(
    admin_client: Client, make_integration
) -> None:
    main = make_integration(**incoming_imap(name="Main", **_sends("main@example.com")))
    make_integration(**outgoing_smtp(name="Other", email_address="other@example.com"))
    assert main.is_default

    response = admin_client.post(
        edit_url(main),
        form_data(name="Main", incoming_username="main@example.com", **_sends_form()),
    )

    assert response.status_code == 302
    ((level, text),) = messages_of(response)
    assert level == "warning"
    assert text.startswith("Integration “Main” saved. It stays the default integration")
    assert "Choose another integration as default first" in text
    assert EmailIntegration.objects.get(pk=main.pk).is_default


def test_the_default_that_stops_sending_must_hand_the_mark_on(
    admin_client: Client, make_integration
) -> None:
    main = make_integration(**incoming_imap(name="Main", **_sends("main@example.com")))
    other = make_integration(**outgoing_smtp(name="Other", email_address="other@example.com"))
    reads_only = form_data(name="Main", incoming_username="main@example.com")

    refused = admin_client.post(edit_url(main), {**reads_only, "is_default": "on"})

    assert refused.status_code == 400
    assert "Turn on Outgoing Emails, or untick" in text_of(
        page(refused), "#field-is_default .field-error"
    )
    assert EmailIntegration.objects.get(pk=main.pk).outgoing_enabled

    handed_on = admin_client.post(edit_url(main), reads_only)

    assert handed_on.status_code == 302
    ((level, text),) = messages_of(handed_on)
    assert level == "success"
    assert text == (
        "Integration “Main” saved. It is no longer the default integration; “Other” sends "
        "the desk's system emails now."
    )
    assert EmailIntegration.objects.get(pk=other.pk).is_default
    assert not EmailIntegration.objects.get(pk=main.pk).is_default


def test_the_first_integration_that_sends_is_made_the_default_and_says_so(
    admin_client: Client,
) -> None:
    response = admin_client.post(NEW, form_data(**SENDS_FORM))

    assert response.status_code == 302
    ((level, text),) = messages_of(response)
    assert level == "success"
    assert "It is the default integration" in text
    assert EmailIntegration.objects.get(name="Support").is_default


def test_the_list_says_which_integration_sends_system_emails(
    admin_client: Client, make_integration
) -> None:
    make_integration(**incoming_imap(name="Reader"))
    assert "No integration sends email" in text_of(
        page(admin_client.get("/settings/email/")), "#system-sender"
    )
    make_integration(**outgoing_smtp(name="Outbound", email_address="desk@example.com"))

    line = text_of(page(admin_client.get("/settings/email/")), "#system-sender")

    assert line == (
        "System emails (alerts, invitations, notifications) go out through the default "
        "integration, “Outbound” (desk@example.com)."
    )


# The desk's own addresses ------------------------------------------------------------------


def test_copy_and_forward_refuse_a_desk_address_with_the_same_message(
    admin_client: Client, make_integration, django_user_model, settings
) -> None:
    settings.EDITION = "enterprise"  # copies of incoming emails
    make_integration(**incoming_imap(name="Desk", incoming_username="desk@example.com"))
    desk_user = django_user_model.objects.create_user(
        username="deskbox", email="Desk@Example.com", is_staff=True
    )

    copy = admin_client.post(NEW, form_data(copy_incoming_to="desk@example.com"))
    forward = admin_client.post(NEW, form_data(forward_ignored_to=str(desk_user.pk)))

    copy_error = text_of(page(copy), "#field-copy_incoming_to .field-error")
    forward_error = text_of(page(forward), "#field-forward_ignored_to .field-error")
    assert copy_error == forward_error
    assert copy_error.startswith(
        "desk@example.com is one of the desk's own addresses (integration “Desk” reads it)"
    )
    assert not EmailIntegration.objects.filter(name="Support").exists()


def test_the_copy_may_not_go_to_the_integration_s_own_mailbox(
    admin_client: Client, settings
) -> None:
    settings.EDITION = "enterprise"

    response = admin_client.post(NEW, form_data(copy_incoming_to="Support@example.com"))

    assert "(integration “Support” reads it)" in text_of(
        page(response), "#field-copy_incoming_to .field-error"
    )


def test_the_copy_may_go_to_a_person(admin_client: Client, settings) -> None:
    settings.EDITION = "enterprise"

    response = admin_client.post(NEW, form_data(copy_incoming_to="archive@example.org"))

    assert response.status_code == 302
    assert EmailIntegration.objects.get(name="Support").copy_incoming_to == "archive@example.org"


# Overlapping sender lists ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted", "ignored", "expected"),
    [
        ("example.com", "@example.com", "“example.com” is on both lists"),
        ("jane@example.com", "example.com", "“jane@example.com” is accepted, but the ignored"),
        ("example.com", "jane@sub.example.com", "The accepted “example.com” covers the ignored"),
    ],
)
def test_overlapping_sender_lists_are_saved_with_a_warning(
    admin_client: Client, accepted: str, ignored: str, expected: str
) -> None:
    response = admin_client.post(NEW, form_data(whitelist_senders=accepted, ignore_senders=ignored))

    assert response.status_code == 302
    warnings = [text for level, text in messages_of(response) if level == "warning"]
    assert len(warnings) == 1
    assert warnings[0].startswith("The sender lists overlap: ")
    assert expected in warnings[0]
    assert EmailIntegration.objects.get(name="Support").ignore_senders == [ignored.lower()]


def test_separate_sender_lists_get_no_warning(admin_client: Client) -> None:
    response = admin_client.post(
        NEW, form_data(whitelist_senders="example.com", ignore_senders="example.org")
    )

    assert [level for level, _ in messages_of(response)] == ["success"]


# A failed Apply ----------------------------------------------------------------------------


def test_a_failed_apply_lists_every_error_at_the_top_with_a_link_to_its_field(
    admin_client: Client,
) -> None:
    response = admin_client.post(
        NEW,
        form_data(
            incoming_server="",
            ignore_subject_regex="([a-z",
            outgoing_enabled="on",
            email_address="",
            smtp_host="smtp.example.com",
        ),
    )

    assert response.status_code == 400
    soup = page(response)
    summary = soup.select_one("form.integration #error-summary")
    # First in the form: before every section.
    form = soup.select_one("form.integration")
    elements = [child for child in form.children if not isinstance(child, str)]
    assert elements[1] is summary  # after the CSRF token
    assert text_of(soup, "#error-summary h2") == "Not applied: 3 problems to fix"
    links = [(a["href"], a.text()) for a in summary.select("li a")]
    assert links == [  # in the order of the page
        ("#field-incoming_server", "Incoming Emails › Server"),
        ("#field-ignore_subject_regex", "Incoming Emails › Ignore emails whose subject matches"),
        ("#field-email_address", "Outgoing Emails › Email address"),
    ]
    for anchor, _ in links:
        assert soup.select_one(anchor) is not None
    # What was typed stays.
    assert soup.select_one("#id_ignore_subject_regex")["value"] == "([a-z"
    assert soup.select_one("#id_smtp_host")["value"] == "smtp.example.com"


def test_a_page_without_errors_has_no_summary(admin_client: Client, make_integration) -> None:
    integration = make_integration()

    assert page(admin_client.get(edit_url(integration))).select_one("#error-summary") is None


# Fields of another protocol ----------------------------------------------------------------


def test_folder_and_push_delivery_are_marked_as_not_for_pop3(
    admin_client: Client, make_integration
) -> None:
    soup = page(admin_client.get(edit_url(make_integration())))

    for name in ("incoming_folder", "use_idle"):
        assert soup.select_one(f"#incoming-fields .not-pop3 #field-{name}") is not None
    assert soup.select_one("#incoming-fields .not-pop3 #field-poll_interval_seconds") is None


# Test panels -------------------------------------------------------------------------------


def test_a_test_email_is_sent_once_and_its_outcome_shown_once(
    admin_client: Client, smtp_server, smtp_integration
) -> None:
    integration = smtp_integration(name="Outbound desk")
    smtp_server.clear()

    response = admin_client.post(
        f"/settings/email/{integration.pk}/test/outgoing/", {"to": "jane@customer.test"}
    )

    assert response.status_code == 302
    assert response["Location"] == f"{edit_url(integration)}#outgoing-test"
    shown = page(admin_client.get(edit_url(integration)))
    outcome = text_of(shown, "#outgoing-test .test-action #outgoing-test-outcome")
    assert re.match(r"Sent to jane@customer\.test through 127\.0\.0\.1:\d+", outcome)
    assert shown.select_one("#id_test_to")["value"] == "jane@customer.test"
    # Loading the page again (a reload) shows it without the outcome and sends nothing.
    again = page(admin_client.get(edit_url(integration)))
    assert again.select_one("#outgoing-test-outcome") is None
    assert len(smtp_server.messages) == 1


def _sends(address: str) -> dict[str, object]:
    return {
        "outgoing_enabled": True,
        "email_address": address,
        "smtp_host": "smtp.example.com",
        "smtp_encryption": "tls",
    }


def _sends_form() -> dict[str, str]:
    return {**SENDS_FORM, "email_address": "main@example.com"}
