"""Bounded email rules (issue 11, part 7): one time budget per email across all rules, a fixed
number of values examined per field, and the rules evaluated before the write transaction
takes its lock. The attack goes through a real Dovecot mailbox and a pass."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from django.db import connection
from django.urls import reverse

from integrations.models import EmailIntegration
from mailworker.pipeline.passes import run_pass
from records.email_rules import MAX_VALUES_PER_FIELD, RULES_BUDGET_SECONDS
from records.models import Category, EmailRule, EmailRuleCondition, Priority, ServiceRecord
from tests.mail import make_email

# Exponential for the backtracking engine even in `regex` (TESTING.md): on a run of 40 "a"
# followed by "@" it would take far longer than any test, per value.
CATASTROPHIC = r"(a|aa)+$"
CRAFTED = "a" * 40


def crafted_email(recipients: int = 160) -> bytes:
    to = ", ".join(f"{CRAFTED}@r{number}.attacker.test" for number in range(recipients))
    return make_email(
        sender="Mallory <mallory@attacker.test>",
        to=to,
        subject=f"{CRAFTED}!",  # never matches (a|aa)+$: catastrophic, whatever the budget left
        headers={"Delivered-To": "support@desk.test"},
    )


def rule(name: str, order: int, *conditions: tuple[str, str, str], **actions) -> EmailRule:
    created = EmailRule.objects.create(name=name, order=order, **actions)
    for field, operator, value in conditions:
        EmailRuleCondition.objects.create(rule=created, field=field, operator=operator, value=value)
    return created


@pytest.fixture
def desk(dovecot, dovecot_integration):
    class Desk:
        integration: EmailIntegration = dovecot_integration(protocol="imap", encryption="ssl")

        def receive(self, *raws: bytes):
            dovecot.deliver(self.integration.incoming_username, list(raws))
            report = run_pass(integration=self.integration, batch_size=500)
            assert not report.failed, report.errors
            return report

    return Desk()


@pytest.mark.django_db
def test_catastrophic_rules_on_160_crafted_recipients_run_out_of_budget_and_are_reported(
    desk, caplog, admin_client
) -> None:
    routed = Category.objects.create(name="Routed by a plain rule")
    rule(
        "Crafted recipients", 1, ("recipient", "regex", CATASTROPHIC), set_priority=Priority.HIGHEST
    )
    rule("Crafted subject", 2, ("subject", "regex", CATASTROPHIC), set_priority=Priority.HIGH)
    # Plain operators are linear and need no budget: they still apply after it ran out.
    rule("From the attacker", 3, ("sender", "ends_with", "@attacker.test"), set_category=routed)

    with caplog.at_level(logging.WARNING, logger="records.email_rules"):
        report = desk.receive(crafted_email())

    assert report.counts["created"] == 1
    record = ServiceRecord.objects.get()
    assert record.priority == Priority.NORMAL  # neither catastrophic rule counted as a match
    assert record.category == routed
    note = record.messages.get(is_internal=True)
    assert "“Crafted recipients”, “Crafted subject”" in note.text_body
    assert f"within {RULES_BUDGET_SECONDS} s" in note.text_body
    assert "Crafted recipients, Crafted subject ran out of their" in caplog.text
    page = admin_client.get(reverse("records:detail", args=[record.pk])).content.decode()
    assert "Email rules ran out of time" in page


@pytest.mark.django_db
def test_only_the_first_recipients_are_examined_and_delivered_to_comes_first(desk) -> None:
    rule(
        "Beyond the cap",
        1,
        ("recipient", "equals", f"{CRAFTED}@r{MAX_VALUES_PER_FIELD + 10}.attacker.test"),
        set_priority=Priority.HIGHEST,
    )
    desk_team = Category.objects.create(name="Desk mailbox")
    rule("Our mailbox", 2, ("recipient", "equals", "support@desk.test"), set_category=desk_team)

    desk.receive(crafted_email())

    record = ServiceRecord.objects.get()
    assert record.priority == Priority.NORMAL
    assert record.category == desk_team  # Delivered-To is not pushed out by a stuffed To
    assert not record.messages.filter(is_internal=True).exists()


@pytest.mark.django_db
def test_rules_within_budget_still_route_as_before(desk) -> None:
    rule("Printers", 1, ("subject", "regex", r"(?i)\bprinter\b"), set_priority=Priority.HIGH)

    desk.receive(make_email())

    record = ServiceRecord.objects.get()
    assert record.priority == Priority.HIGH
    assert not record.messages.filter(is_internal=True).exists()


class WriteWhileRulesRun(logging.Handler):
    """When the rules report that they ran out of time (they are still evaluating, in the
    worker's thread), another connection looks at the database:

    - SQLite: it writes to the same file without waiting, and fails with "database is
      locked" if the worker's write transaction is open then (one writer for the file);
    - PostgreSQL: it reads the worker's backend in pg_stat_activity, which says "idle in
      transaction" if the worker's transaction is open then (PostgreSQL locks rows, so a
      write elsewhere would not show it)."""

    def __init__(self, settings: dict, worker_backend: int | None) -> None:
        super().__init__(logging.WARNING)
        self.settings = settings
        self.worker_backend = worker_backend
        self.outcomes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.worker_backend is None:
            self.outcomes.append(self._write_to_sqlite())
        else:
            self.outcomes.append(self._worker_state_in_postgresql())

    def _write_to_sqlite(self) -> str:
        other = sqlite3.connect(self.settings["NAME"], timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute(
                "INSERT INTO records_category (name) VALUES (?)", ("Written while rules ran",)
            )
            other.execute("COMMIT")
            return "written"
        except sqlite3.OperationalError as error:
            return str(error)
        finally:
            other.close()

    def _worker_state_in_postgresql(self) -> str:
        import psycopg

        settings = self.settings
        with psycopg.connect(
            dbname=settings["NAME"],
            user=settings["USER"],
            password=settings["PASSWORD"] or None,
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            autocommit=True,
        ) as other:
            row = other.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", (self.worker_backend,)
            ).fetchone()
        return row[0] if row else "no such backend"


@pytest.mark.django_db(transaction=True)
def test_rules_are_evaluated_while_another_connection_can_still_write(desk) -> None:
    worker_backend = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            worker_backend = cursor.fetchone()[0]
    rule("Crafted recipients", 1, ("recipient", "regex", CATASTROPHIC))
    # Two emails: the second one's rules run after the first one was written, which is when
    # an open chunk transaction would hold the lock.
    handler = WriteWhileRulesRun(connection.settings_dict, worker_backend)
    logger = logging.getLogger("records.email_rules")
    logger.addHandler(handler)
    try:
        report = desk.receive(make_email(subject="First, harmless"), crafted_email())
    finally:
        logger.removeHandler(handler)

    assert report.counts["created"] == 2
    if worker_backend is not None:
        assert handler.outcomes == ["idle"]
        return
    assert report.counts["created"] == 2
    assert handler.outcomes == ["written"]
    assert Category.objects.filter(name="Written while rules ran").exists()
