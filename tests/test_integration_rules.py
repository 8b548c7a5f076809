"""The rules an email integration follows, through the service the screens and import use."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from integrations.models import EmailIntegration
from integrations.services import Secrets, delete_integration, save_integration
from records.models import Status
from tests.conftest import incoming_imap, outgoing_smtp

pytestmark = pytest.mark.django_db


def errors_of(exc_info: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return exc_info.value.message_dict


def save(**fields) -> EmailIntegration:
    password = fields.pop("incoming_password", "pw")
    return save_integration(
        integration=EmailIntegration(**fields), secrets=Secrets(incoming_password=password)
    )


def test_default_statuses_exist_after_migrate() -> None:
    statuses = list(Status.objects.values_list("name", "is_closed"))
    assert statuses == [
        ("New", False),
        ("Open", False),
        ("In Progress", False),
        ("User Responded", False),
        ("Closed", True),
    ]


def save_sending(name: str, **fields) -> EmailIntegration:
    """An integration that reads and sends, as a desk's main one does."""
    address = f"{name.lower()}@example.com"
    return save(
        **incoming_imap(
            name=name,
            incoming_username=address,
            outgoing_enabled=True,
            email_address=address,
            smtp_host="smtp.example.com",
            smtp_encryption="tls",
            **fields,
        )
    )


def test_first_integration_that_sends_becomes_the_default() -> None:
    reader = save(**incoming_imap(name="Reader"))
    first = save_sending("First")
    second = save_sending("Second")
    assert reader.is_default is False
    assert first.is_default is True
    assert second.is_default is False


def test_making_another_integration_default_takes_the_mark_from_the_first() -> None:
    first = save_sending("First")
    second = save_sending("Second")
    second.is_default = True
    save_integration(integration=second)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.is_default, second.is_default) == (False, True)
    assert EmailIntegration.objects.filter(is_default=True).count() == 1


def test_an_integration_that_only_reads_cannot_be_made_the_default() -> None:
    main = save_sending("Main")
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(name="Reader", is_default=True))
    assert "must have Outgoing Emails on" in errors_of(exc_info)["is_default"][0]
    main.refresh_from_db()
    assert main.is_default is True
    assert not EmailIntegration.objects.filter(name="Reader").exists()


def test_the_default_cannot_stop_sending() -> None:
    main = save_sending("Main")
    main.outgoing_enabled = False
    with pytest.raises(ValidationError) as exc_info:
        save_integration(integration=main)
    assert "must have Outgoing Emails on" in errors_of(exc_info)["is_default"][0]
    assert EmailIntegration.objects.get(pk=main.pk).outgoing_enabled is True


def test_unticking_the_default_keeps_the_mark() -> None:
    main = save_sending("Main")
    save_sending("Other")
    main.is_default = False
    save_integration(integration=main)
    assert EmailIntegration.objects.get(pk=main.pk).is_default is True


def test_a_stored_default_that_cannot_send_hands_the_mark_on_when_unticked() -> None:
    reader = save(**incoming_imap(name="Reader"))
    sender = save(**incoming_imap(name="Sender", incoming_username="sender@example.com"))
    EmailIntegration.objects.filter(pk=sender.pk).update(
        outgoing_enabled=True, email_address="s@example.com", smtp_host="smtp.example.com"
    )
    # As stored before the rule: the default only reads.
    EmailIntegration.objects.filter(pk=reader.pk).update(is_default=True)
    reader.refresh_from_db()
    reader.is_default = False
    save_integration(integration=reader)
    assert EmailIntegration.objects.get(pk=reader.pk).is_default is False
    assert EmailIntegration.objects.get(pk=sender.pk).is_default is True


def test_database_refuses_two_defaults() -> None:
    save_sending("First")
    other = save_sending("Second")
    with pytest.raises(IntegrityError), transaction.atomic():
        EmailIntegration.objects.filter(pk=other.pk).update(is_default=True)


def test_deleting_the_default_hands_the_mark_to_the_oldest_remaining_that_sends() -> None:
    first = save_sending("First")
    save(**incoming_imap(name="Reader", incoming_username="reader@example.com"))
    second = save_sending("Second")
    delete_integration(integration=first)
    second.refresh_from_db()
    assert second.is_default is True
    assert EmailIntegration.objects.get(name="Reader").is_default is False


def test_name_is_unique() -> None:
    save(**incoming_imap(name="Support"))
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(name="Support", incoming_username="x@example.com"))
    assert "name" in errors_of(exc_info)


def test_an_integration_must_do_something() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(name="Idle")
    assert "Turn on Incoming Emails" in errors_of(exc_info)["incoming_enabled"][0]


def test_incoming_needs_server_username_and_password() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(name="Bare", incoming_enabled=True, incoming_password="")
    errors = errors_of(exc_info)
    assert {"incoming_server", "incoming_username", "incoming_password"} <= errors.keys()


def test_outgoing_needs_address_and_host() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(name="Out", outgoing_enabled=True)
    assert {"email_address", "smtp_host"} <= errors_of(exc_info).keys()


@pytest.mark.parametrize(
    ("protocol", "encryption", "port"),
    [
        ("imap", "ssl", 993),
        ("imap", "tls", 143),
        ("imap", "tls1.2", 143),
        ("imap", "none", 143),
        ("pop3", "ssl", 995),
        ("pop3", "tls", 110),
        ("pop3", "none", 110),
    ],
)
def test_incoming_port_defaults_from_protocol_and_encryption(protocol, encryption, port) -> None:
    integration = save(**incoming_imap(incoming_protocol=protocol, incoming_encryption=encryption))
    assert integration.incoming_port is None
    assert integration.effective_incoming_port == port


@pytest.mark.parametrize(
    ("encryption", "port"), [("ssl", 465), ("tls", 587), ("tls1.2", 587), ("none", 25)]
)
def test_smtp_port_defaults_from_encryption(encryption, port) -> None:
    integration = save(**outgoing_smtp(smtp_encryption=encryption))
    assert integration.effective_smtp_port == port


def test_an_explicit_port_wins() -> None:
    integration = save(**incoming_imap(incoming_port=10993))
    assert integration.effective_incoming_port == 10993


def test_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(incoming_port=70000))
    assert "incoming_port" in errors_of(exc_info)


@pytest.mark.parametrize(
    "server",
    ["outlook.office365.com", "imap.outlook.com", "EXCHANGE.MICROSOFT.COM", "x.office365.com."],
)
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_basic_auth_to_microsoft_is_refused_and_points_to_oauth(server, protocol) -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(incoming_server=server, incoming_protocol=protocol))
    message = errors_of(exc_info)["incoming_protocol"][0]
    assert "March 1, 2026" in message
    assert "Microsoft 365 (OAuth 2.0)" in message


def test_lookalike_microsoft_domain_is_not_refused() -> None:
    integration = save(**incoming_imap(incoming_server="mail.notoffice365.com"))
    assert integration.pk is not None


def test_smtp_to_microsoft_needs_the_oauth_protocol() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**outgoing_smtp(smtp_host="smtp.office365.com"))
    assert "OAuth 2.0" in errors_of(exc_info)["smtp_host"][0]


def test_microsoft_oauth_needs_tenant_and_client_id_but_no_password() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(
            **incoming_imap(
                incoming_protocol="microsoft365", incoming_server="", incoming_password=""
            )
        )
    errors = errors_of(exc_info)
    assert {"oauth_tenant", "oauth_client_id"} <= errors.keys()
    assert "incoming_password" not in errors
    integration = save(
        **incoming_imap(
            incoming_protocol="microsoft365",
            incoming_server="",
            oauth_tenant="contoso.onmicrosoft.com",
            oauth_client_id="00000000-0000-0000-0000-000000000001",
        ),
        incoming_password="",
    )
    assert integration.effective_incoming_server == "outlook.office365.com"


def test_twenty_ignored_senders_pass_and_twenty_one_are_refused() -> None:
    twenty = [f"user{i}@spam.test" for i in range(20)]
    assert len(save(**incoming_imap(ignore_senders=twenty)).ignore_senders) == 20
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(name="Other", ignore_senders=[*twenty, "example.org"]))
    assert "At most 20" in errors_of(exc_info)["ignore_senders"][0]


def test_ignore_list_takes_addresses_and_domains_normalised() -> None:
    integration = save(
        **incoming_imap(ignore_senders=[" Noreply@Example.COM ", "@spam.test", "bulk.test"])
    )
    assert integration.ignore_senders == ["noreply@example.com", "@spam.test", "bulk.test"]


def test_ignore_list_names_the_bad_entries() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(ignore_senders=["ok@example.com", "not an address", "localhost"]))
    message = errors_of(exc_info)["ignore_senders"][0]
    assert "not" in message and "localhost" in message and "ok@example.com" not in message


def test_java_style_inline_flags_compile() -> None:
    integration = save(
        **incoming_imap(ignore_subject_regex="(?iu)(out of office)|(?iu)(automatic reply)")
    )
    assert integration.ignore_subject_regex.startswith("(?iu)")


def test_a_regex_that_does_not_compile_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(ignore_subject_regex="([a-z"))
    assert "does not compile" in errors_of(exc_info)["ignore_subject_regex"][0]


def test_ca_certificate_must_be_pem() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(ca_certificate="not a certificate"))
    assert "PEM" in errors_of(exc_info)["ca_certificate"][0]


def test_forward_ignored_to_needs_users_with_their_own_address(django_user_model) -> None:
    integration = save(**incoming_imap())
    nobody = django_user_model.objects.create_user(username="nomail", email="", is_staff=True)
    desk = django_user_model.objects.create_user(
        username="desk", email="Support@Example.com", is_staff=True
    )
    person = django_user_model.objects.create_user(
        username="person", email="person@example.com", is_staff=True
    )
    with pytest.raises(ValidationError) as exc_info:
        save_integration(integration=integration, forward_ignored_to=[nobody, desk])
    nomail, loop = errors_of(exc_info)["forward_ignored_to"]
    assert "nomail has no email address" in nomail
    assert loop.startswith("support@example.com is one of the desk's own addresses")
    save_integration(integration=integration, forward_ignored_to=[person])
    assert list(integration.forward_ignored_to.all()) == [person]


def test_status_change_and_its_exceptions_are_stored() -> None:
    open_status = Status.objects.get(name="Open")
    closed = Status.objects.get(name="Closed")
    integration = save_integration(
        integration=EmailIntegration(**incoming_imap(change_status_to=open_status)),
        secrets=Secrets(incoming_password="pw"),
        unless_status_in=[closed],
    )
    integration.refresh_from_db()
    assert integration.change_status_to == open_status
    assert list(integration.unless_status_in.all()) == [closed]


class TestEditions:
    def test_basic_allows_two_incoming_and_one_outgoing(self, settings) -> None:
        settings.EDITION = "basic"
        save(**incoming_imap(name="In 1", incoming_username="a@example.com"))
        save(**incoming_imap(name="In 2", incoming_username="b@example.com"))
        with pytest.raises(ValidationError) as exc_info:
            save(**incoming_imap(name="In 3", incoming_username="c@example.com"))
        assert "basic edition allows 2 incoming" in errors_of(exc_info)["incoming_enabled"][0]
        save(**outgoing_smtp(name="Out 1"))
        with pytest.raises(ValidationError) as exc_info:
            save(**outgoing_smtp(name="Out 2"))
        assert "basic edition allows 1 outgoing" in errors_of(exc_info)["outgoing_enabled"][0]

    def test_editing_an_existing_integration_does_not_count_it_twice(self, settings) -> None:
        settings.EDITION = "basic"
        first = save(**incoming_imap(name="In 1", incoming_username="a@example.com"))
        save(**incoming_imap(name="In 2", incoming_username="b@example.com"))
        first.description = "edited"
        save_integration(integration=first)
        first.refresh_from_db()
        assert first.description == "edited"

    def test_full_is_unlimited(self, settings) -> None:
        settings.EDITION = "full"
        for number in range(4):
            save(**incoming_imap(name=f"In {number}", incoming_username=f"{number}@example.com"))
        assert EmailIntegration.objects.filter(incoming_enabled=True).count() == 4

    @pytest.mark.parametrize(
        ("edition", "allowed"), [("basic", False), ("full", False), ("enterprise", True)]
    )
    def test_copy_of_incoming_emails_is_enterprise_only(self, settings, edition, allowed) -> None:
        settings.EDITION = edition
        if allowed:
            assert save(**incoming_imap(copy_incoming_to="archive@example.com")).copy_incoming_to
        else:
            with pytest.raises(ValidationError) as exc_info:
                save(**incoming_imap(copy_incoming_to="archive@example.com"))
            assert "enterprise edition" in errors_of(exc_info)["copy_incoming_to"][0]


def test_a_mailbox_address_that_another_integration_forwards_to_is_refused(
    django_user_model,
) -> None:
    person = django_user_model.objects.create_user(
        username="person", email="person@example.com", is_staff=True
    )
    first = save(**incoming_imap(name="First"))
    save_integration(integration=first, forward_ignored_to=[person])
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(name="Second", incoming_username="person@example.com"))
    assert (
        "“First” forwards ignored emails to person@example.com"
        in (errors_of(exc_info)["incoming_username"][0])
    )


def test_changing_the_mailbox_onto_a_stored_recipient_is_refused(django_user_model) -> None:
    person = django_user_model.objects.create_user(
        username="person", email="person@example.com", is_staff=True
    )
    integration = save(**incoming_imap())
    save_integration(integration=integration, forward_ignored_to=[person])
    integration.incoming_username = "person@example.com"
    with pytest.raises(ValidationError) as exc_info:
        save_integration(integration=integration)
    assert "forward_ignored_to" in errors_of(exc_info)


def test_sender_lists_must_be_lists_of_strings() -> None:
    with pytest.raises(ValidationError) as exc_info:
        save(**incoming_imap(ignore_senders="spam.test", whitelist_senders=[1, 2]))
    errors = errors_of(exc_info)
    assert errors["ignore_senders"] == ["Enter a list of addresses and domains."]
    assert errors["whitelist_senders"] == ["Enter a list of addresses and domains."]


def test_ignored_emails_are_never_forwarded_to_end_users(end_user) -> None:
    integration = save(**incoming_imap())
    with pytest.raises(ValidationError) as exc_info:
        save_integration(integration=integration, forward_ignored_to=[end_user])
    assert "enduser is not staff" in errors_of(exc_info)["forward_ignored_to"][0]
