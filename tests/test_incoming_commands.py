"""`fetchmail` and `ingest_email`, and the real-world corpus through the whole pipeline."""

from __future__ import annotations

import io
import mailbox
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from integrations.models import EmailIntegration
from mailworker.management.commands.ingest_email import raw_emails
from mailworker.status import state_of
from records.models import Message, ProcessedEmail, Quarantine, ServiceRecord
from tests.conftest import PROJECT_ROOT, free_port, incoming_imap
from tests.mail import make_email

pytestmark = pytest.mark.django_db
CORPUS = PROJECT_ROOT.parent / "shared" / "corpus"


def test_fetchmail_reports_each_integration_and_fails_when_one_fails(
    dovecot, dovecot_integration
) -> None:
    good = dovecot_integration(protocol="imap", encryption="ssl")
    broken = dovecot_integration(protocol="pop3", encryption="ssl")
    EmailIntegration.objects.filter(pk=broken.pk).update(incoming_password="wrong password")
    dovecot.deliver(good.incoming_username, [make_email(), make_email(subject="Two", body="2")])
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 integration"):
        call_command("fetchmail", stdout=out)
    lines = out.getvalue().splitlines()
    good_line = next(line for line in lines if line.startswith(good.name))
    broken_line = next(line for line in lines if line.startswith(broken.name))
    assert "fetched 2, created 2" in good_line
    assert "errors 1" in broken_line
    assert ServiceRecord.objects.count() == 2
    broken.refresh_from_db()
    state = state_of(broken)
    assert state.last_error and state.last_polled_at and state.last_success_at is None


def test_fetchmail_one_integration(dovecot, dovecot_integration) -> None:
    first = dovecot_integration(protocol="imap", encryption="tls")
    second = dovecot_integration(protocol="imap", encryption="tls")
    dovecot.deliver(first.incoming_username, [make_email()])
    dovecot.deliver(second.incoming_username, [make_email(sender="b@customer.test")])
    out = io.StringIO()
    call_command("fetchmail", "--integration", first.name, stdout=out)
    assert ServiceRecord.objects.get().source_integration == first
    assert dovecot.count(second.incoming_username) == 1


def test_ingest_email_reads_files_directories_mbox_and_stdin(
    tmp_path: Path, make_integration, monkeypatch
) -> None:
    integration = make_integration(**incoming_imap())
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.eml").write_bytes(make_email(subject="from a file in a dir", body="a"))
    (tmp_path / "single.eml").write_bytes(make_email(subject="from a file", body="b"))
    box = mailbox.mbox(tmp_path / "archive.mbox")
    for n in range(3):
        box.add(make_email(subject=f"from mbox {n}", body=f"m{n}"))
    box.close()
    call_command(
        "ingest_email",
        "--integration",
        integration.name,
        str(tmp_path / "dir"),
        str(tmp_path / "single.eml"),
        str(tmp_path / "archive.mbox"),
        stdout=io.StringIO(),
    )
    monkeypatch.setattr(
        "sys.stdin", io.TextIOWrapper(io.BytesIO(make_email(subject="from stdin", body="s")))
    )
    call_command("ingest_email", "--integration", integration.name, stdout=io.StringIO())
    titles = set(ServiceRecord.objects.values_list("title", flat=True))
    assert titles == {
        "from a file in a dir",
        "from a file",
        "from mbox 0",
        "from mbox 1",
        "from mbox 2",
        "from stdin",
    }


def test_ingest_email_exits_75_when_the_database_is_unreachable(tmp_path: Path) -> None:
    eml = tmp_path / "one.eml"
    eml.write_bytes(make_email())
    env = {
        "PATH": os.environ["PATH"],
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/servicedesk",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "ingest_email", "--integration", "Support", str(eml)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 75, result.stderr
    assert "database is unreachable" in result.stderr


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(
        path
        for path in CORPUS.rglob("*")
        if path.is_file() and path.name not in {"LICENSE", "README", "README.md"}
    )


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the corpus folder {CORPUS} is absent")
def test_every_corpus_email_ends_somewhere_and_nothing_unclean_reaches_the_database(
    make_integration, capsys
) -> None:
    integration = make_integration(**incoming_imap())
    files = corpus_files()
    out = io.StringIO()
    call_command(
        "ingest_email", "--integration", integration.name, *map(str, files), stdout=out, verbosity=2
    )
    outcomes = Counter(
        line.split(": ", 1)[1].split()[0] for line in out.getvalue().splitlines()[:-1]
    )
    handled = ProcessedEmail.objects.filter(integration=integration).count()
    # Files that begin with an mbox "From " line are split into their emails, as the
    # command does; identical emails share one processed marker.
    emails = [raw for path in files for _label, raw in raw_emails(path)]
    contents = set(emails)
    distinct = len(contents)
    # Every distinct email ends as a record, a message-log entry, ignored, a duplicate or a
    # quarantine entry with its raw bytes.
    assert handled == distinct
    assert sum(outcomes.values()) == len(emails)
    assert Quarantine.objects.count() == outcomes["quarantined"]
    for entry in Quarantine.objects.all():
        assert bytes(entry.raw_email) in contents  # the raw bytes, exactly as they came
    with connection.cursor() as cursor:
        for table, columns in (
            ("records_servicerecord", ["title", "description"]),
            ("records_message", ["subject", "text_body", "html_body", "from_address"]),
            ("records_attachment", ["filename"]),
        ):
            for column in columns:
                cursor.execute(f"SELECT {column} FROM {table}")  # noqa: S608
                for (value,) in cursor.fetchall():
                    assert "\x00" not in value
                    value.encode("utf-8")  # raises on a lone surrogate
    with capsys.disabled():
        print(
            f"\ncorpus: {len(files)} files, {len(emails)} emails, {distinct} distinct: "
            f"{dict(outcomes)}; "
            f"records {ServiceRecord.objects.count()}, messages {Message.objects.count()}"
        )
        for reason, count in Counter(
            entry.reason.split(" (")[0].split(":")[0] for entry in Quarantine.objects.all()
        ).most_common():
            print(f"  quarantined: {count} x {reason}")
