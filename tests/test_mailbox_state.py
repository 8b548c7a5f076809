"""The mail engine's runtime state (MailboxState) and the OAuth tokens (OAuthGrant) live in
models of their own: a pass reads and writes them without extra queries, the migration moves
existing values there and back, and "needs reconnect" is an event of integrations that the
mail engine answers with one alert."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations import signals as integration_signals
from integrations.models import EmailIntegration, OAuthGrant
from integrations.oauth.grants import TokenGrant
from integrations.oauth.services import mark_needs_reconnect, store_grant
from mailworker.models import MailboxState, OutboxEmail
from mailworker.scheduling import poll_integration_now
from mailworker.status import note_failure, state_of
from tests.conftest import incoming_imap
from tests.mail import make_email


def _statements_on(captured: CaptureQueriesContext, table: str) -> list[str]:
    """The first word of each statement of its own on `table` (not a join of another's)."""
    return [
        q["sql"].split()[0]
        for q in captured.captured_queries
        if f'FROM "{table}"' in q["sql"] or q["sql"].startswith(f'UPDATE "{table}"')
    ]


@pytest.mark.django_db
def test_a_pass_reads_state_and_grant_with_the_integration_and_writes_each_once(
    dovecot: Any, dovecot_integration: Any
) -> None:
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, [make_email()])

    poll_integration_now(integration_id=integration.pk)
    # A streak of failures the good pass ends.
    MailboxState.objects.filter(integration=integration).update(
        consecutive_failures=4, failure_alert_sent_at=timezone.now()
    )
    with CaptureQueriesContext(connection) as second:
        poll_integration_now(integration_id=integration.pk)

    state = MailboxState.objects.get(integration=integration)
    assert state.last_success_at is not None and state.poll_failures == 0
    assert state.consecutive_failures == 0 and state.failure_alert_sent_at is None
    # The first pass creates the state row; after that a pass costs less than it did when
    # the state was columns of the integration: one query for the integration (joined to
    # its state and grant), one UPDATE for the poll that also ends the failure streak.
    assert _statements_on(second, "mailworker_mailboxstate") == ["UPDATE"]
    assert _statements_on(second, "integrations_oauthgrant") == []
    # As many as before the state left EmailIntegration (not counting PostgreSQL's advisory
    # lock and unlock, which SQLite does without).
    statements = [q["sql"] for q in second.captured_queries if "advisory" not in q["sql"]]
    assert len(statements) <= 7


@pytest.mark.django_db
def test_the_streak_alerts_admins_once_and_a_reconnect_starts_a_new_one(
    make_integration: Any, admin_user: Any, settings: Any
) -> None:
    settings.INTEGRATION_FAILURES_BEFORE_ALERT = 2
    integration = make_integration(**incoming_imap())
    alerts = [
        note_failure(integration=integration, direction="fetch email", error="refused")
        for _ in range(4)
    ]
    assert alerts == [False, True, False, False]
    assert MailboxState.objects.get(integration=integration).consecutive_failures == 4

    store_grant(
        integration=integration,
        grant=TokenGrant(access_token="at", expires_at=timezone.now(), account="a@b.test"),
    )

    state = MailboxState.objects.get(integration=integration)
    assert (state.consecutive_failures, state.failure_alert_sent_at) == (0, None)
    assert OutboxEmail.objects.filter(kind=OutboxEmail.Kind.SYSTEM_ALERT).count() == 1


@pytest.mark.django_db
def test_needs_reconnect_is_a_signal_sent_once_that_the_mail_engine_answers_with_an_alert(
    make_integration: Any, admin_user: Any
) -> None:
    integration = make_integration(
        **incoming_imap(
            incoming_protocol="google",
            incoming_server="",
            incoming_password="",
            oauth_client_id="id.apps.googleusercontent.test",
        )
    )
    heard: list[str] = []

    def listen(sender: Any, integration: EmailIntegration, grant: OAuthGrant, **kwargs: Any):
        heard.append(grant.needs_reconnect_reason)

    integration_signals.needs_reconnect.connect(listen)
    try:
        for _ in range(3):
            mark_needs_reconnect(integration=integration, reason="invalid_grant: revoked")
    finally:
        integration_signals.needs_reconnect.disconnect(listen)

    assert heard == ["invalid_grant: revoked"]
    integration.refresh_from_db()
    assert integration.needs_reconnect and integration.grant.needs_reconnect_notified_at
    (alert,) = OutboxEmail.objects.filter(kind=OutboxEmail.Kind.SYSTEM_ALERT)
    assert "must be connected to Google again" in alert.subject
    assert "invalid_grant: revoked" in alert.text_body
    # The notice is the alert of the streak: failing passes add no second one.
    assert state_of(integration).failure_alert_sent_at is not None


# The migration ------------------------------------------------------------------------------

BEFORE = [
    ("integrations", "0008_identity_name_control_characters"),
    ("mailworker", "0004_flood_outbox_record_relation"),
]
AFTER = [("integrations", "0010_state_remove_columns"), ("mailworker", "0005_state_mailbox_state")]


def _migrate(targets: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_state_and_tokens_and_back() -> None:
    polled_at = timezone.now() - timedelta(minutes=5)
    try:
        old = _migrate(BEFORE)
        Integration = old.get_model("integrations", "EmailIntegration")
        connected = Integration.objects.create(
            name="Office",
            incoming_enabled=True,
            incoming_protocol="microsoft365",
            oauth_refresh_token="rt-secret",
            oauth_access_token="at-secret",
            oauth_account="desk@contoso.test",
            last_polled_at=polled_at,
            last_error="refused",
            poll_failures=3,
            idle_status="listening",
        )
        plain = Integration.objects.create(name="Plain", incoming_enabled=True)

        new = _migrate(AFTER)
        State = new.get_model("mailworker", "MailboxState")
        Grant = new.get_model("integrations", "OAuthGrant")
        state = State.objects.get(integration_id=connected.pk)
        assert (state.last_polled_at, state.last_error, state.poll_failures, state.idle_status) == (
            polled_at,
            "refused",
            3,
            "listening",
        )
        grant = Grant.objects.get(integration_id=connected.pk)
        assert (grant.refresh_token, grant.access_token, grant.account) == (
            "rt-secret",
            "at-secret",
            "desk@contoso.test",
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT refresh_token FROM {Grant._meta.db_table} WHERE id = %s",  # noqa: S608
                [grant.pk],
            )
            assert cursor.fetchone()[0].startswith("fernet:")
        assert not Grant.objects.filter(integration_id=plain.pk).exists()

        old = _migrate(BEFORE)
        back = old.get_model("integrations", "EmailIntegration").objects.get(pk=connected.pk)
        assert (back.oauth_refresh_token, back.oauth_account, back.poll_failures) == (
            "rt-secret",
            "desk@contoso.test",
            3,
        )
        assert back.last_polled_at == polled_at
    finally:
        call_command("migrate", verbosity=0)
