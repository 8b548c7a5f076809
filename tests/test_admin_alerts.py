"""Alerts and notifications reach an admin who has an email address: when the first choice
has none they fall back to every admin who has one, and an alert that reached nobody is not
counted as sent, so it goes out once someone has added an address. Admins see a banner on
every page while no admin has an address or an integration keeps failing."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client

from integrations.models import EmailIntegration, OAuthGrant
from integrations.oauth.services import mark_needs_reconnect
from mailworker.admin_banner import ADMIN_BANNER_CACHE_KEY, admin_banner_facts
from mailworker.models import NotificationSettings, OutboxEmail
from mailworker.notifications import admin_addresses, queue_flood_alert
from mailworker.pipeline.passes import run_pass
from mailworker.status import note_failure, state_of
from records.services import create_record, get_or_create_end_user
from tests.conftest import incoming_imap
from tests.mail import make_email

pytestmark = pytest.mark.django_db
ALERT = OutboxEmail.Kind.SYSTEM_ALERT


@pytest.fixture(autouse=True)
def _fresh_banner() -> None:
    cache.delete(ADMIN_BANNER_CACHE_KEY)


@pytest.fixture
def superuser_without_address(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser(username="root", email="", password="x")


@pytest.fixture
def mail_admin(make_staff: Any) -> Any:
    """A staff member who may change email integrations (an admin), with an address."""
    return make_staff("mailadmin", "change_emailintegration", "view_emailintegration")


def alerts() -> list[OutboxEmail]:
    return list(OutboxEmail.objects.filter(kind=ALERT).order_by("pk"))


def fail(integration: EmailIntegration, times: int) -> list[bool]:
    return [
        note_failure(integration=integration, direction="fetch email", error="refused")
        for _ in range(times)
    ]


# Integration keeps failing ----------------------------------------------------------------


def test_the_failing_alert_goes_to_the_admins_with_an_address_when_no_superuser_has_one(
    make_integration, superuser_without_address, mail_admin, settings
) -> None:
    settings.INTEGRATION_FAILURES_BEFORE_ALERT = 2
    integration = make_integration(**incoming_imap())
    assert fail(integration, 3) == [False, True, False]
    (alert,) = alerts()
    assert alert.to_addresses == ["mailadmin@desk.test"]
    assert alert.subject == 'Email integration "Support" keeps failing to fetch email'


def test_an_alert_nobody_could_receive_is_not_counted_and_goes_out_once_an_address_exists(
    make_integration, superuser_without_address, settings
) -> None:
    settings.INTEGRATION_FAILURES_BEFORE_ALERT = 2
    integration = make_integration(**incoming_imap())
    assert fail(integration, 3) == [False, False, False]
    assert alerts() == [] and state_of(integration).failure_alert_sent_at is None

    superuser_without_address.email = "root@desk.test"
    superuser_without_address.save()
    assert fail(integration, 2) == [True, False]
    (alert,) = alerts()
    assert alert.to_addresses == ["root@desk.test"]
    assert "failed to fetch email 4 times in a row" in alert.text_body
    integration.refresh_from_db()
    assert state_of(integration).failure_alert_sent_at is not None


# Needs reconnect ---------------------------------------------------------------------------


def google_integration(make_integration) -> EmailIntegration:
    return make_integration(
        **incoming_imap(
            incoming_protocol="google",
            incoming_server="",
            incoming_password="",
            oauth_client_id="id.apps.googleusercontent.test",
        )
    )


def test_needs_reconnect_falls_back_to_the_admins_with_an_address(
    make_integration, superuser_without_address, mail_admin
) -> None:
    integration = google_integration(make_integration)
    mark_needs_reconnect(integration=integration, reason="invalid_grant: revoked")
    (alert,) = alerts()
    assert alert.to_addresses == ["mailadmin@desk.test"]
    assert "invalid_grant: revoked" in alert.text_body
    assert "(support@example.com)" in alert.text_body


def test_a_reconnect_notice_nobody_received_is_sent_again_at_the_next_refusal(
    make_integration, superuser_without_address
) -> None:
    integration = google_integration(make_integration)
    mark_needs_reconnect(integration=integration, reason="invalid_grant: revoked")
    assert alerts() == []
    assert OAuthGrant.objects.get(integration=integration).needs_reconnect_notified_at is None
    assert state_of(integration).failure_alert_sent_at is None

    superuser_without_address.email = "root@desk.test"
    superuser_without_address.save()
    mark_needs_reconnect(integration=integration, reason="invalid_grant: revoked")
    (alert,) = alerts()
    assert alert.to_addresses == ["root@desk.test"]


# Flood -------------------------------------------------------------------------------------


def test_a_flood_alert_falls_back_to_the_admins_and_says_whether_anyone_got_it(
    make_integration, superuser_without_address, django_user_model
) -> None:
    integration = make_integration(**incoming_imap())
    assert not queue_flood_alert(integration=integration, source="x.test", first_reason="flood")
    fixer = django_user_model.objects.create_user(
        username="fixer", email="fixer@desk.test", is_staff=True
    )
    fixer.user_permissions.add(
        Permission.objects.get(
            content_type__app_label="integrations", codename="change_emailintegration"
        )
    )
    assert queue_flood_alert(integration=integration, source="x.test", first_reason="flood")
    (alert,) = alerts()
    assert alert.to_addresses == ["fixer@desk.test"]
    assert alert.subject == "Flood held in quarantine: new records from x.test"


# Record notifications -----------------------------------------------------------------------


def test_an_assigned_admin_without_an_address_is_replaced_by_the_admins_who_have_one(
    django_user_model, admin_user
) -> None:
    assignee = django_user_model.objects.create_superuser(username="noaddr", email="", password="x")
    requester, _ = get_or_create_end_user(email="jane@customer.test")
    record = create_record(title="Printer", description="", requester=requester)
    record.assigned_admin = assignee
    record.save()
    choices = NotificationSettings.current()
    assert admin_addresses(record, choices=choices) == ["admin@desk.test"]
    # Who made a change hears nothing of it, also in the fallback.
    assert admin_addresses(record, choices=choices, exclude=admin_user) == []


# The banner --------------------------------------------------------------------------------


def test_admins_see_a_banner_while_no_admin_has_an_address(
    client: Client, superuser_without_address
) -> None:
    client.force_login(superuser_without_address)
    page = client.get("/settings/notifications/").content.decode()
    assert 'id="banner-no-admin-address"' in page
    assert '<a href="/account/">Add your email address</a>' in page

    superuser_without_address.email = "root@desk.test"
    superuser_without_address.save()  # forgets the cached banner
    assert 'id="admin-banner"' not in client.get("/settings/notifications/").content.decode()


def test_admins_see_a_banner_while_an_integration_keeps_failing(
    client: Client, admin_user, make_integration, settings
) -> None:
    settings.INTEGRATION_FAILURES_BEFORE_ALERT = 2
    integration = make_integration(**incoming_imap())
    fail(integration, 2)
    client.force_login(admin_user)
    page = client.get("/settings/notifications/").content.decode()
    assert "The email integration “Support” keeps failing" in page
    assert f'href="/settings/email/{integration.pk}/"' in page
    assert 'id="banner-no-admin-address"' not in page


def test_staff_who_are_not_admins_see_no_banner(
    client: Client, superuser_without_address, make_staff
) -> None:
    agent = make_staff("agent", "view_emailintegration")
    client.force_login(agent)
    assert 'id="admin-banner"' not in client.get("/settings/email/").content.decode()


def test_the_banner_costs_at_most_two_queries_and_is_cached(
    admin_user, django_assert_max_num_queries
) -> None:
    with django_assert_max_num_queries(2):
        admin_banner_facts()
    with django_assert_max_num_queries(0):
        admin_banner_facts()


def test_a_flood_nobody_heard_of_is_alerted_at_the_next_pass_once_someone_has_an_address(
    dovecot, dovecot_integration, superuser_without_address, settings
) -> None:
    """Through the real pipeline: Dovecot, passes, the quarantine."""
    settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR = 2
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    flood = [
        make_email(sender="mallory@attacker.test", subject=f"Invoice {n}", body=f"Pay {n}.")
        for n in range(8)
    ]
    dovecot.deliver(mailbox.incoming_username, flood[:4])
    assert run_pass(integration=mailbox).counts["quarantined"] == 2
    assert alerts() == []

    superuser_without_address.email = "root@desk.test"
    superuser_without_address.save()
    dovecot.deliver(mailbox.incoming_username, flood[4:6])
    assert run_pass(integration=mailbox).counts["quarantined"] == 2
    (alert,) = alerts()
    assert alert.to_addresses == ["root@desk.test"]
    assert "mallory@attacker.test" in alert.subject

    # Alerted now: the flood goes on without a second alert.
    dovecot.deliver(mailbox.incoming_username, flood[6:])
    assert run_pass(integration=mailbox).counts["quarantined"] == 2
    assert len(alerts()) == 1
