"""`manage.py integration export` and `import`, against the real database."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as crypto_serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.core.management.base import CommandError

from integrations.models import EmailIntegration, OAuthGrant
from integrations.serialization import FIELDS, NOT_EXPORTED
from integrations.services import Secrets, delete_integration, save_integration
from records.models import Status
from tests.conftest import incoming_imap, stored_column

MODEL_FIELDS = [f.name for f in EmailIntegration._meta.concrete_fields] + [
    f.name for f in EmailIntegration._meta.many_to_many
]
EXPORTED_MODEL_FIELDS = [name for name in MODEL_FIELDS if name not in NOT_EXPORTED]


def run_export(*args: str) -> str:
    out = io.StringIO()
    call_command("integration", "export", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_import(path: Path) -> str:
    out = io.StringIO()
    call_command("integration", "import", str(path), stdout=out)
    return out.getvalue()


def write_json(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "integrations.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def import_error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(CommandError) as caught:
        run_import(write_json(tmp_path, data))
    return str(caught.value)


def imap_entry(name: str = "Support", **incoming: Any) -> dict[str, Any]:
    return {
        "name": name,
        "incoming": {
            "enabled": True,
            "server": "mail.example.com",
            "username": f"{name.lower()}@example.com",
            "password": "mailbox-secret",
            **incoming,
        },
    }


def snapshot(integration: EmailIntegration) -> dict[str, Any]:
    """Every exported field as stored, read back from the database (secrets decrypted)."""
    integration = EmailIntegration.objects.get(pk=integration.pk)
    values: dict[str, Any] = {}
    for name in EXPORTED_MODEL_FIELDS:
        if name == "change_status_to":
            values[name] = integration.change_status_to and integration.change_status_to.name
        elif name == "unless_status_in":
            values[name] = sorted(s.name for s in integration.unless_status_in.all())
        elif name == "forward_ignored_to":
            values[name] = sorted(u.username for u in integration.forward_ignored_to.all())
        else:
            values[name] = getattr(integration, name)
    return values


def self_signed_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Desk Test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    # Stripped, as the form stores it.
    return certificate.public_bytes(crypto_serialization.Encoding.PEM).decode().strip()


@pytest.fixture
def two_integrations(settings: Any, admin_user: Any, django_user_model: Any) -> None:
    """An IMAP + SMTP integration with every setting away from its default, and an OAuth one
    holding tokens, which is the default."""
    settings.EDITION = "enterprise"  # for copy_incoming_to
    Status.objects.get_or_create(name="Open")
    waiting, _ = Status.objects.get_or_create(name="Waiting")
    closed, _ = Status.objects.get_or_create(name="Closed", defaults={"is_closed": True})
    agent = django_user_model.objects.create_user(
        username="agent", email="agent@desk.test", is_staff=True
    )
    support = EmailIntegration(
        **incoming_imap(
            description="The main mailbox",
            incoming_port=1993,
            incoming_encryption="tls1.2",
            incoming_folder="Support",
            poll_interval_seconds=120,
            use_last_record_number=True,
            search_body_for_record_number=True,
            change_status_to=Status.objects.get(name="Open"),
            ignore_senders=["noreply@example.com", "spam.example"],
            ignore_subject_regex="(?i)out of office",
            whitelist_senders=["example.com"],
            duplicate_exempt_senders=["monitor@example.com", "agent"],
            copy_incoming_to="archive@example.com",
            remove_emojis=False,
            outgoing_enabled=True,
            email_address="support@example.com",
            smtp_host="smtp.example.com",
            smtp_port=2525,
            smtp_encryption="ssl",
            smtp_username="support",
            outgoing_encoding="base64",
            outgoing_content_type="plain",
            outgoing_charset="iso-8859-1",
            verify_certificates=False,
            ca_certificate=self_signed_pem(),
        )
    )
    save_integration(
        integration=support,
        secrets=Secrets(incoming_password="imap-Pässwörd", smtp_password="smtp-secret-42"),
        unless_status_in=[waiting, closed],
        forward_ignored_to=[admin_user, agent],
    )
    office = EmailIntegration(
        name="Office",
        is_default=True,
        incoming_enabled=True,
        incoming_protocol="microsoft365",
        oauth_mailbox_access="pop3",
        incoming_username="office@contoso.test",
        oauth_tenant="contoso.onmicrosoft.com",
        oauth_client_id="0d7c-client-id",
        # The default sends the desk's system emails: through Microsoft's SMTP, same sign-in.
        outgoing_enabled=True,
        email_address="office@contoso.test",
        smtp_host="smtp.office365.com",
        smtp_encryption="tls",
    )
    save_integration(integration=office, secrets=Secrets(oauth_client_secret="oauth-client-Secret"))
    OAuthGrant.objects.create(
        integration=office,
        refresh_token="refresh-token-never-exported",
        access_token="access-token-never-exported",
        account="office@contoso.test",
    )


# Export ---------------------------------------------------------------------------------


def test_every_model_field_is_in_the_json_or_deliberately_left_out() -> None:
    assert {f.model_field for f in FIELDS} | NOT_EXPORTED == set(MODEL_FIELDS)
    assert not {f.model_field for f in FIELDS} & NOT_EXPORTED


@pytest.mark.django_db
def test_export_with_secrets_then_import_restores_every_field(
    two_integrations: None, tmp_path: Path
) -> None:
    before = {i.name: snapshot(i) for i in EmailIntegration.objects.all()}
    path = tmp_path / "export.json"
    path.write_text(run_export("--with-secrets"), encoding="utf-8")
    for integration in EmailIntegration.objects.all():
        delete_integration(integration=integration)
    assert not EmailIntegration.objects.exists()

    assert run_import(path) == "created Office\ncreated Support\n"

    after = {i.name: snapshot(i) for i in EmailIntegration.objects.all()}
    assert after == before
    assert after["Support"]["incoming_password"] == "imap-Pässwörd"
    assert after["Support"]["smtp_password"] == "smtp-secret-42"
    assert after["Support"]["unless_status_in"] == ["Closed", "Waiting"]
    assert after["Support"]["forward_ignored_to"] == ["admin", "agent"]
    assert after["Office"]["oauth_client_secret"] == "oauth-client-Secret"
    assert after["Office"]["is_default"] is True
    support = EmailIntegration.objects.get(name="Support")
    assert stored_column(support, "incoming_password").startswith("fernet:")
    assert "imap" not in stored_column(support, "incoming_password")
    # Tokens belong to the old connect flow; the admin connects again.
    assert EmailIntegration.objects.get(name="Office").grant.refresh_token == ""


@pytest.mark.django_db
def test_export_has_the_documented_shape(two_integrations: None) -> None:
    exported = json.loads(run_export("--with-secrets", "Support"))
    assert len(exported) == 1
    support = exported[0]
    assert list(support) == [
        "name",
        "description",
        "is_default",
        "incoming",
        "oauth",
        "outgoing",
        "tls",
    ]
    assert support["incoming"]["server"] == "mail.example.com"
    assert support["incoming"]["port"] == 1993
    assert support["incoming"]["change_status_to"] == "Open"
    assert support["incoming"]["unless_status_in"] == ["Closed", "Waiting"]
    assert support["incoming"]["forward_ignored_to"] == ["admin", "agent"]
    assert support["outgoing"]["server"] == "smtp.example.com"
    assert support["outgoing"]["password"] == "smtp-secret-42"
    assert support["tls"]["verify_certificates"] is False
    office = json.loads(run_export("Office"))[0]
    assert office["incoming"]["port"] is None
    assert office["incoming"]["change_status_to"] is None


@pytest.mark.django_db
def test_export_without_secrets_holds_no_secret(two_integrations: None) -> None:
    output = run_export()
    exported = json.loads(output)
    assert [i["name"] for i in exported] == ["Office", "Support"]
    for secret in (
        "imap-Pässwörd",
        "smtp-secret-42",
        "oauth-client-Secret",
        "refresh-token-never-exported",
        "access-token-never-exported",
    ):
        assert secret not in output
    assert '"password"' not in output
    assert '"client_secret"' not in output
    assert "token" not in output


@pytest.mark.django_db
def test_export_with_secrets_never_holds_oauth_tokens(two_integrations: None) -> None:
    output = run_export("--with-secrets")
    assert "oauth-client-Secret" in output
    assert "refresh-token-never-exported" not in output
    assert "access-token-never-exported" not in output
    assert "token" not in output


@pytest.mark.django_db
def test_export_of_an_unknown_name_fails_and_names_the_integrations(make_integration: Any) -> None:
    make_integration()
    with pytest.raises(CommandError, match="No integration named “Nope”.*Support"):
        run_export("Nope")


# Import ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_import_with_an_invalid_integration_changes_nothing(
    make_integration: Any, tmp_path: Path
) -> None:
    alpha = make_integration(**incoming_imap(name="Alpha", incoming_username="alpha@example.com"))
    data = [
        imap_entry("First"),
        imap_entry("Support", server=""),
        {"name": "Alpha", "description": "changed"},
    ]

    message = import_error(tmp_path, data)

    assert "Support: incoming.server: Enter the mail server's host name" in message
    assert "First" not in message
    assert list(EmailIntegration.objects.values_list("name", flat=True)) == ["Alpha"]
    assert EmailIntegration.objects.get(pk=alpha.pk).description == ""


@pytest.mark.django_db
def test_import_reports_every_problem_of_every_integration(tmp_path: Path) -> None:
    data = [
        imap_entry("First", server="", password=""),
        imap_entry("Second", folder=" ", poll_interval_seconds=5),
    ]
    message = import_error(tmp_path, data)
    assert "First: incoming.server: Enter the mail server's host name" in message
    assert "First: incoming.password: Enter the mailbox password." in message
    assert "Second: incoming.folder: Enter the IMAP folder to read" in message
    assert (
        "Second: incoming.poll_interval_seconds: Ensure this value is greater than or equal to 10."
        in message
    )
    assert not EmailIntegration.objects.exists()


@pytest.mark.django_db
def test_rules_from_the_services_are_named_by_their_json_path(
    settings: Any, tmp_path: Path
) -> None:
    settings.EDITION = "full"
    message = import_error(tmp_path, imap_entry(copy_incoming_to="archive@example.com"))
    assert "Support: incoming.copy_incoming_to: Sending a copy of incoming emails needs" in message


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {**imap_entry(), "descripton": "x"},
            "Support: descripton: Unknown key; did you mean “description”?",
        ),
        (
            imap_entry(servr="mail.example.com"),
            "Support: incoming.servr: Unknown key; did you mean “server”?",
        ),
        ({**imap_entry(), "smtp": {}}, "Support: smtp: Unknown key"),
        (
            {**imap_entry(), "oauth": {"refresh_token": "x"}},
            "Support: oauth.refresh_token: Unknown key",
        ),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert expected in import_error(tmp_path, data)
    assert not EmailIntegration.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            imap_entry(port="993"),
            "Support: incoming.port: Must be a whole number or null, not a string.",
        ),
        (
            imap_entry(enabled="yes"),
            "Support: incoming.enabled: Must be true or false, not a string.",
        ),
        (
            imap_entry(poll_interval_seconds=None),
            "incoming.poll_interval_seconds: Must be a whole number, not null.",
        ),
        (imap_entry(server=None), "Support: incoming.server: Must be a string, not null."),
        (
            imap_entry(ignore_senders="spam.example"),
            "incoming.ignore_senders: Must be a list of strings, not a string.",
        ),
        (
            imap_entry(ignore_senders=["spam.example", 7]),
            "incoming.ignore_senders: Must be a list of strings; the list holds a number.",
        ),
        (imap_entry(password=123), "Support: incoming.password: Must be a string, not a number."),
        (
            imap_entry(username="a\x00b@example.com"),
            "incoming.username: Must not contain NUL characters",
        ),
        ({**imap_entry(), "tls": []}, "Support: tls: Must be an object, not a list."),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert expected in import_error(tmp_path, data)
    assert not EmailIntegration.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([imap_entry(), imap_entry()], "Support: name: The file holds this integration twice."),
        ([{"description": "no name"}], "integration 1 in the file: name: Required"),
        ([imap_entry(), {"name": ""}], "integration 2 in the file: name: Must be a non-empty"),
        ([imap_entry(), "Support"], "integration 2 in the file: Must be an object, not a string."),
        (
            [{**imap_entry("A"), "is_default": True}, {**imap_entry("B"), "is_default": True}],
            "B: is_default: A is already the default in this file",
        ),
        (42, "must hold an integration (a JSON object) or a list of them, not a number"),
    ],
)
def test_file_level_mistakes_are_refused(tmp_path: Path, data: Any, expected: str) -> None:
    assert expected in import_error(tmp_path, data)
    assert not EmailIntegration.objects.exists()


@pytest.mark.django_db
def test_invalid_json_is_refused_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"name": "Support",}\n]\n', encoding="utf-8")
    with pytest.raises(CommandError, match=r"Not valid JSON: .* at line 2, column 22"):
        run_import(path)


@pytest.mark.django_db
def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="Cannot read .*missing.json"):
        run_import(tmp_path / "missing.json")


@pytest.mark.django_db
def test_update_without_password_keeps_the_stored_one(
    make_integration: Any, tmp_path: Path
) -> None:
    stored = make_integration(
        smtp_password="smtp-stored",
        **incoming_imap(
            outgoing_enabled=True,
            email_address="support@example.com",
            smtp_host="smtp.example.com",
            smtp_username="support",
        ),
    )
    data = {"name": "Support", "incoming": {"server": "imap.example.org"}}

    assert run_import(write_json(tmp_path, data)) == "updated Support\n"

    updated = EmailIntegration.objects.get(pk=stored.pk)
    assert updated.incoming_server == "imap.example.org"
    assert updated.incoming_password == "mailbox-secret"
    assert updated.smtp_password == "smtp-stored"
    assert updated.email_address == "support@example.com"  # absent keys keep their value


@pytest.mark.django_db
def test_update_with_password_replaces_it_and_an_empty_one_clears_it(
    make_integration: Any, tmp_path: Path
) -> None:
    stored = make_integration()
    run_import(write_json(tmp_path, {"name": "Support", "incoming": {"password": "new-one"}}))
    assert EmailIntegration.objects.get(pk=stored.pk).incoming_password == "new-one"

    message = import_error(tmp_path, {"name": "Support", "incoming": {"password": ""}})
    assert "Support: incoming.password: Enter the mailbox password." in message
    assert EmailIntegration.objects.get(pk=stored.pk).incoming_password == "new-one"


@pytest.mark.django_db
def test_related_lists_left_out_keep_their_value_and_given_ones_replace_it(
    make_integration: Any, admin_user: Any, tmp_path: Path
) -> None:
    closed, _ = Status.objects.get_or_create(name="Closed")
    Status.objects.get_or_create(name="Waiting")
    stored = make_integration()
    stored.unless_status_in.set([closed])
    stored.forward_ignored_to.set([admin_user])

    run_import(write_json(tmp_path, {"name": "Support", "description": "x"}))
    assert list(stored.unless_status_in.values_list("name", flat=True)) == ["Closed"]
    assert list(stored.forward_ignored_to.all()) == [admin_user]

    data = {
        "name": "Support",
        "incoming": {"unless_status_in": ["Waiting"], "forward_ignored_to": []},
    }
    run_import(write_json(tmp_path, data))
    assert list(stored.unless_status_in.values_list("name", flat=True)) == ["Waiting"]
    assert not stored.forward_ignored_to.exists()


@pytest.mark.django_db
def test_import_from_stdin_accepts_a_single_object(monkeypatch: Any) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(imap_entry())))
    out = io.StringIO()

    call_command("integration", "import", "-", stdout=out)

    assert out.getvalue() == "created Support\n"
    created = EmailIntegration.objects.get(name="Support")
    assert created.incoming_server == "mail.example.com"
    assert created.incoming_password == "mailbox-secret"
    assert created.incoming_folder == "INBOX"  # absent keys take the model's default
    assert stored_column(created, "incoming_password").startswith("fernet:")


@pytest.mark.django_db
def test_text_is_stripped_as_the_form_does(tmp_path: Path) -> None:
    run_import(write_json(tmp_path, imap_entry(" Support ", server=" mail.example.com\n")))
    created = EmailIntegration.objects.get()
    assert (created.name, created.incoming_server) == ("Support", "mail.example.com")


@pytest.mark.django_db
def test_unknown_status_name_is_refused(tmp_path: Path) -> None:
    Status.objects.get_or_create(name="Open")
    Status.objects.get_or_create(name="Closed")
    message = import_error(tmp_path, imap_entry(change_status_to="Opne"))
    assert "Support: incoming.change_status_to: No status named “Opne”." in message
    assert "Open" in message.split("Opne")[-1]  # the existing statuses are listed

    message = import_error(tmp_path, imap_entry(unless_status_in=["Closed", "Done"]))
    assert "Support: incoming.unless_status_in: No status named “Done”." in message
    assert not EmailIntegration.objects.exists()


@pytest.mark.django_db
def test_forward_ignored_to_finds_users_by_username_or_email(
    admin_user: Any, django_user_model: Any, tmp_path: Path
) -> None:
    agent = django_user_model.objects.create_user(
        username="agent", email="Agent@Desk.test", is_staff=True
    )
    run_import(write_json(tmp_path, imap_entry(forward_ignored_to=["admin", "agent@desk.TEST"])))
    integration = EmailIntegration.objects.get(name="Support")
    assert set(integration.forward_ignored_to.all()) == {admin_user, agent}


@pytest.mark.django_db
def test_unknown_or_inactive_users_are_refused(django_user_model: Any, tmp_path: Path) -> None:
    django_user_model.objects.create_user(username="gone", email="gone@desk.test", is_active=False)
    message = import_error(tmp_path, imap_entry(forward_ignored_to=["nobody", "gone"]))
    assert (
        "Support: incoming.forward_ignored_to: No user with the username or email address "
        "“nobody”; gone is not an active user." in message
    )
    assert not EmailIntegration.objects.exists()


@pytest.mark.django_db
def test_forwarding_to_a_desk_mailbox_is_refused_like_in_the_form(
    django_user_model: Any, tmp_path: Path
) -> None:
    django_user_model.objects.create_user(
        username="loop", email="support@example.com", is_staff=True
    )
    message = import_error(tmp_path, imap_entry(forward_ignored_to=["loop"]))
    assert (
        "Support: incoming.forward_ignored_to: support@example.com is one of the desk's own "
        "addresses" in message
    )


@pytest.mark.django_db
def test_changing_the_address_onto_a_stored_forward_recipient_is_refused(
    make_integration: Any, django_user_model: Any, tmp_path: Path
) -> None:
    stored = make_integration()
    loop = django_user_model.objects.create_user(
        username="loop", email="loop@example.com", is_staff=True
    )
    stored.forward_ignored_to.set([loop])
    data = {"name": "Support", "incoming": {"username": "loop@example.com"}}

    message = import_error(tmp_path, data)

    assert (
        "Support: incoming.forward_ignored_to: loop@example.com is one of the desk's own "
        "addresses (integration “Support” reads it)" in message
    )
    assert EmailIntegration.objects.get(pk=stored.pk).incoming_username == "support@example.com"
