"""The Test buttons of an integration, through Django's test client, against the real
aiosmtpd and Dovecot: what the admin reads, and where on the page."""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email import policy
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from mailworker import connection_tests
from mailworker.headers import LOOP_HEADER
from tests.conftest import free_port

pytestmark = pytest.mark.django_db


def outgoing_url(integration) -> str:
    return reverse("integration_tests:outgoing", args=[integration.pk])


def incoming_url(integration) -> str:
    return reverse("integration_tests:incoming", args=[integration.pk])


# A small HTML tree with CSS descendant selectors (tag, #id, .class): enough to say where on
# the page a message is, without a parser library the project does not otherwise need.

VOID_TAGS = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass(eq=False)
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list[Element | str] = field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return self.attrs[name]

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def descendants(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.descendants()

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def matches(self, simple: str) -> bool:
        tag, *rest = re.split(r"(?=[#.])", simple)
        if tag and tag != self.tag:
            return False
        for part in rest:
            if part[0] == "#" and self.attrs.get("id") != part[1:]:
                return False
            if part[0] == "." and part[1:] not in self.classes:
                return False
        return True

    def select(self, selector: str) -> list[Element]:
        *ancestors, last = selector.split()
        found = []
        for element in self.descendants():
            if not element.matches(last):
                continue
            wanted, node = list(ancestors), element.parent
            while wanted and node is not None:
                if node.matches(wanted[-1]):
                    wanted.pop()
                node = node.parent
            if not wanted:
                found.append(element)
        return found

    def select_one(self, selector: str) -> Element | None:
        found = self.select(selector)
        return found[0] if found else None


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("document", {})

    def handle_starttag(self, tag, attrs) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID_TAGS:
            self.current = element

    def handle_endtag(self, tag) -> None:
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data) -> None:
        self.current.children.append(data)


def page(response) -> Element:
    builder = _TreeBuilder()
    builder.feed(response.content.decode())
    return builder.root


def text_of(soup: Element, selector: str) -> str:
    element = soup.select_one(selector)
    assert element is not None, f"nothing matches {selector}"
    return element.text()


def raw_email(subject: str) -> bytes:
    return (
        f"From: Jane <jane@customer.test>\r\nTo: support@desk.test\r\nSubject: {subject}\r\n"
        "Message-ID: <{0}@customer.test>\r\n\r\nHello.\r\n".format(subject.replace(" ", "."))
    ).encode()


def run_test(client, url: str, data: dict[str, str] | None = None):
    """Press a Test button: the POST redirects to the integration's page, at the panel
    (POST/redirect/GET), and that page shows the outcome."""
    response = client.post(url, data or {})
    assert response.status_code == 302
    page_url, _, anchor = response["Location"].partition("#")
    assert anchor in ("outgoing-test", "incoming-test")
    return client.get(page_url)


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


# Outgoing -------------------------------------------------------------------------------


def test_the_test_email_arrives_and_the_server_s_answer_is_shown(
    admin_client, smtp_server, smtp_integration
) -> None:
    integration = smtp_integration(encryption="tls", name="Support desk")
    smtp_server.clear()

    response = run_test(admin_client, outgoing_url(integration), {"to": "jane@customer.test"})

    assert response.status_code == 200
    soup = page(response)
    outcome = text_of(soup, "#outgoing-test #outgoing-test-outcome")
    assert outcome.startswith("Sent to jane@customer.test through 127.0.0.1:")
    assert "The server answered: 250 2.0.0 Ok: queued as T" in outcome
    assert soup.select(".test-error") == []
    (received,) = smtp_server.messages
    assert received.mail_from == "desk@desk.test"
    assert received.rcpt_tos == ["jane@customer.test"]
    message = email.message_from_bytes(received.raw, policy=policy.default)
    assert message["Subject"] == "Test email from servicedesk (integration Support desk)"
    assert message["From"] == "Support desk <desk@desk.test>"
    assert message["To"] == "jane@customer.test"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message[LOOP_HEADER] == "servicedesk"  # composed as the outbox composes
    assert message["Message-ID"].endswith("@desk.test>")
    assert message["Date"]
    assert "outgoing email works" in message.get_content()


def test_a_wrong_smtp_password_is_shown_next_to_the_password_field(
    admin_client, smtp_server, smtp_integration
) -> None:
    integration = smtp_integration(encryption="ssl", smtp_password="not the password")
    smtp_server.clear()

    response = run_test(admin_client, outgoing_url(integration), {"to": "jane@customer.test"})

    soup = page(response)
    error = text_of(soup, "#outgoing-fields #field-smtp_password .test-error")
    assert "Authentication failed" in error
    assert "535" in error
    assert "desk@desk.test" in error
    assert "has-error" in soup.select_one("#field-smtp_password").classes
    assert len(soup.select(".test-error")) == 1
    outcome = text_of(soup, "#outgoing-test #outgoing-test-outcome")
    assert outcome.startswith("Test failed: Authentication failed")
    assert soup.select_one("#outgoing-test-outcome a")["href"] == "#field-smtp_password"
    assert smtp_server.messages == []


def test_a_refused_connection_is_shown_next_to_the_port(admin_client, smtp_integration) -> None:
    integration = smtp_integration(encryption="none", smtp_port=free_port())

    response = run_test(admin_client, outgoing_url(integration), {"to": "jane@customer.test"})

    error = text_of(page(response), "#field-smtp_port .test-error")
    assert "refused the connection" in error


def test_an_untrusted_certificate_is_shown_next_to_the_ca_certificate(
    admin_client, smtp_integration
) -> None:
    integration = smtp_integration(encryption="tls", ca_certificate="")

    response = run_test(admin_client, outgoing_url(integration), {"to": "jane@customer.test"})

    error = text_of(page(response), "#field-ca_certificate .test-error")
    assert "not trusted" in error


def test_a_refused_sender_is_shown_next_to_the_email_address(
    admin_client, smtp_integration
) -> None:
    integration = smtp_integration(encryption="tls", email_address="desk@blocked.test")

    response = run_test(admin_client, outgoing_url(integration), {"to": "jane@customer.test"})

    error = text_of(page(response), "#field-email_address .test-error")
    assert "refused the sender desk@blocked.test" in error
    assert "553" in error


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("", "Enter the address"),
        ("not an address", "is not an email address"),
        ("a@customer.test, b@customer.test", "Enter one email address"),
        ("a@customer.test\r\nBcc: b@customer.test", "Enter one email address"),
        ("nobody@refused.test", "550 5.1.1"),
    ],
)
def test_the_address_typed_is_checked_next_to_it(
    admin_client, smtp_server, smtp_integration, to, expected
) -> None:
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()

    response = run_test(admin_client, outgoing_url(integration), {"to": to})

    assert expected in text_of(page(response), "#outgoing-test #field-test-to .test-error")
    assert smtp_server.messages == []


# Incoming -------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "encryption"), [("imap", "ssl"), ("pop3", "tls")])
def test_test_connection_counts_the_waiting_emails(
    admin_client, dovecot, dovecot_integration, protocol, encryption
) -> None:
    integration = dovecot_integration(protocol=protocol, encryption=encryption)
    dovecot.deliver(integration.incoming_username, [raw_email(f"Email {n}") for n in range(3)])

    response = run_test(admin_client, incoming_url(integration))

    assert response.status_code == 200
    outcome = text_of(page(response), "#incoming-test #incoming-test-outcome")
    port = dovecot.port_for(protocol, encryption)
    assert outcome.startswith(f"Logged in to 127.0.0.1:{port} as {integration.incoming_username}")
    assert outcome.endswith("3 emails waiting.")
    assert ("folder INBOX" in outcome) == (protocol == "imap")
    # Nothing was read or removed.
    assert dovecot.count(integration.incoming_username) == 3


def test_a_wrong_mailbox_password_is_shown_next_to_the_password_field(
    admin_client, dovecot_integration
) -> None:
    integration = dovecot_integration(incoming_password="not the password")

    response = run_test(admin_client, incoming_url(integration))

    error = text_of(page(response), "#incoming-fields #field-incoming_password .test-error")
    assert error.startswith("Authentication failed:")
    assert integration.incoming_username in error


def test_a_missing_folder_is_shown_next_to_the_folder(admin_client, dovecot_integration) -> None:
    integration = dovecot_integration(incoming_folder="Nowhere")

    response = run_test(admin_client, incoming_url(integration))

    error = text_of(page(response), "#field-incoming_folder .test-error")
    assert "'Nowhere' does not exist" in error
    assert "INBOX" in error


def test_the_incoming_service_says_when_incoming_is_off(smtp_integration) -> None:
    outcome = connection_tests.test_incoming_connection(integration=smtp_integration())

    assert not outcome.ok
    assert "Incoming Emails is off" in outcome.message


# The page and who may use it --------------------------------------------------------------


def test_the_test_forms_sit_outside_the_integration_form(
    admin_client, smtp_integration, dovecot_integration
) -> None:
    outgoing_only = smtp_integration()
    incoming_only = dovecot_integration()

    outgoing_page = page(admin_client.get(reverse("integrations:edit", args=[outgoing_only.pk])))
    incoming_page = page(admin_client.get(reverse("integrations:edit", args=[incoming_only.pk])))
    new_page = page(admin_client.get(reverse("integrations:new")))

    assert outgoing_page.select_one("form.integration #outgoing-test") is None
    assert outgoing_page.select_one("form#outgoing-test")["action"] == outgoing_url(outgoing_only)
    assert outgoing_page.select_one("form#incoming-test") is None
    assert incoming_page.select_one("form#incoming-test")["action"] == incoming_url(incoming_only)
    assert incoming_page.select_one("form#outgoing-test") is None
    assert new_page.select_one("#integration-tests") is None


def test_anonymous_visitors_are_sent_to_log_in(client, smtp_integration) -> None:
    integration = smtp_integration()

    response = client.post(outgoing_url(integration), {"to": "jane@customer.test"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("url", [outgoing_url, incoming_url])
def test_staff_without_the_change_permission_are_refused(
    client, make_staff, smtp_server, smtp_integration, url
) -> None:
    integration = smtp_integration()
    client.force_login(make_staff("viewer", "view_emailintegration"))
    smtp_server.clear()

    response = client.post(url(integration), {"to": "jane@customer.test"})

    assert response.status_code == 403
    assert smtp_server.messages == []


def test_staff_with_the_change_permission_may_test(
    client, make_staff, smtp_server, smtp_integration
) -> None:
    integration = smtp_integration()
    client.force_login(make_staff("editor", "view_emailintegration", "change_emailintegration"))

    response = run_test(client, outgoing_url(integration), {"to": "jane@customer.test"})

    assert "The server answered: 250" in text_of(page(response), "#outgoing-test-outcome")


@pytest.mark.parametrize("url", [outgoing_url, incoming_url])
def test_get_is_not_allowed(admin_client, smtp_integration, url) -> None:
    response = admin_client.get(url(smtp_integration()))

    assert response.status_code == 405


def test_the_csrf_token_is_required(client, admin_user, smtp_server, smtp_integration) -> None:
    integration = smtp_integration()
    client.handler.enforce_csrf_checks = True
    client.force_login(admin_user)
    smtp_server.clear()

    response = client.post(outgoing_url(integration), {"to": "jane@customer.test"})

    assert response.status_code == 403
    assert smtp_server.messages == []
