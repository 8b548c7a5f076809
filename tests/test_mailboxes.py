"""The IMAP and POP3 adapters against a real Dovecot: what they read, what they remove, and
how they fail."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from django.utils import timezone
from imapclient import IMAPClient

from integrations.models import EmailIntegration, OAuthGrant
from mailworker.mailboxes.base import FetchedMessage, MailboxAuthError, MailboxError
from mailworker.mailboxes.factory import open_mailbox
from tests.conftest import free_port

pytestmark = pytest.mark.django_db

PROTOCOLS = ["imap", "pop3"]
ENCRYPTIONS = ["none", "ssl", "tls", "tls1.2"]


def raw_email(number: int, *, body: bytes = b"") -> bytes:
    """An email as it travels (CRLF line ends), with the lines POP3 must dot-stuff and
    poplib must restore, a line longer than poplib's usual limit, and 8-bit bytes."""
    return (
        b"From: Jane Doe <jane@customer.test>\r\n"
        b"To: support@desk.test\r\n"
        b"Subject: Issue " + str(number).encode() + b"\r\n"
        b"Message-ID: <issue-" + str(number).encode() + b"@customer.test>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b".starts with a dot\r\n"
        b"..starts with two dots\r\n"
        b".\r\n"
        b"Gr\xc3\xbc\xc3\x9fe, caf\xc3\xa9\r\n" + b"x" * 5000 + b"\r\n" + body + b"-- \r\nJane\r\n"
    )


def headers_of(raw: bytes) -> bytes:
    return raw[: raw.index(b"\r\n\r\n") + 4]


def fetch_all(
    integration: EmailIntegration, *, timeout: float = 5, **options
) -> list[FetchedMessage]:
    with open_mailbox(integration, timeout=timeout, **options) as mailbox:
        return list(mailbox.fetch())


# Reading and acking ------------------------------------------------------------------------


@pytest.mark.parametrize("encryption", ENCRYPTIONS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fetch_returns_the_exact_bytes_and_ack_removes_only_acked_messages(
    dovecot, dovecot_integration, protocol, encryption
):
    integration = dovecot_integration(protocol=protocol, encryption=encryption)
    raws = [raw_email(1), raw_email(2), raw_email(3)]
    dovecot.deliver(integration.incoming_username, raws)

    with open_mailbox(integration, timeout=5) as mailbox:
        fetched = list(mailbox.fetch())
        assert [message.raw for message in fetched] == raws
        assert [message.size for message in fetched] == [len(raw) for raw in raws]
        assert not any(message.oversized for message in fetched)
        assert len({message.uid for message in fetched}) == 3
        mailbox.ack([fetched[0].uid, fetched[1].uid])

    again = fetch_all(integration)
    assert [(message.uid, message.raw) for message in again] == [(fetched[2].uid, raws[2])]
    assert dovecot.count(integration.incoming_username) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_second_session_sees_the_same_uids(dovecot, dovecot_integration, protocol):
    integration = dovecot_integration(protocol=protocol, encryption="ssl")
    dovecot.deliver(integration.incoming_username, [raw_email(1), raw_email(2)])

    first = [message.uid for message in fetch_all(integration)]
    second = [message.uid for message in fetch_all(integration)]

    assert first == second
    assert dovecot.count(integration.incoming_username) == 2  # fetching removes nothing


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fetch_takes_at_most_the_batch_size_oldest_first(dovecot, dovecot_integration, protocol):
    integration = dovecot_integration(protocol=protocol, encryption="ssl")
    raws = [raw_email(number) for number in range(1, 6)]
    dovecot.deliver(integration.incoming_username, raws)

    with open_mailbox(integration, timeout=5) as mailbox:
        batch = list(mailbox.fetch(limit=2))
        assert [message.raw for message in batch] == raws[:2]
        mailbox.ack([message.uid for message in batch])

    assert [message.raw for message in fetch_all(integration)] == raws[2:]


def test_imap_fetches_in_chunks_a_batch_larger_than_one_fetch(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    raws = [b"Subject: %d\r\n\r\nBody %d\r\n" % (number, number) for number in range(250)]
    dovecot.deliver(integration.incoming_username, raws)

    with open_mailbox(integration, timeout=5) as mailbox:
        fetched = list(mailbox.fetch(limit=240))
        mailbox.ack([message.uid for message in fetched])

    assert [message.raw for message in fetched] == raws[:240]
    assert dovecot.count(integration.incoming_username) == 10


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_oversized_message_comes_as_its_headers_only(dovecot, dovecot_integration, protocol):
    integration = dovecot_integration(protocol=protocol, encryption="ssl")
    small = b"Subject: small\r\n\r\nHello\r\n"
    large = raw_email(2, body=b"attachment " * 2000 + b"\r\n")
    dovecot.deliver(integration.incoming_username, [small, large])

    fetched = fetch_all(integration, max_message_bytes=6000)

    assert [message.oversized for message in fetched] == [False, True]
    assert fetched[0].raw == small
    assert fetched[1].raw == headers_of(large)
    assert fetched[1].size == len(large) > 6000


def test_the_desk_setting_limits_message_size_unless_the_caller_does(
    dovecot, dovecot_integration, settings
):
    settings.MAX_INCOMING_EMAIL_BYTES = 1000
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(integration.incoming_username, [raw_email(1)])

    with open_mailbox(integration, timeout=5) as mailbox:
        assert [message.oversized for message in mailbox.fetch()] == [True]
    assert [message.oversized for message in fetch_all(integration, max_message_bytes=10**6)] == [
        False
    ]


# IMAP folders and flags --------------------------------------------------------------------


def test_imap_reads_the_configured_folder(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl", incoming_folder="Support")
    username = integration.incoming_username
    dovecot.deliver(username, [raw_email(1)])
    dovecot.deliver(username, [raw_email(2)], folder="Support")

    with open_mailbox(integration, timeout=5) as mailbox:
        fetched = list(mailbox.fetch())
        mailbox.ack([message.uid for message in fetched])

    assert [message.raw for message in fetched] == [raw_email(2)]
    assert dovecot.count(username, folder="Support") == 0
    assert dovecot.count(username) == 1


def test_imap_names_a_folder_that_does_not_exist(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl", incoming_folder="Helpdesk")
    dovecot.deliver(integration.incoming_username, [raw_email(1)], folder="Support")

    with pytest.raises(MailboxError) as error:
        fetch_all(integration)

    assert "'Helpdesk' does not exist" in str(error.value)
    assert "Support" in str(error.value)  # the folders it does have
    assert not isinstance(error.value, MailboxAuthError)


def test_imap_fetch_leaves_messages_unseen(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(integration.incoming_username, [raw_email(1), raw_email(2, body=b"y" * 9000)])

    fetched = fetch_all(integration, max_message_bytes=8000)
    assert [message.oversized for message in fetched] == [False, True]

    context = ssl.create_default_context(cadata=dovecot.ca_pem)
    with IMAPClient(dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=5) as client:
        client.login(integration.incoming_username, integration.incoming_password)
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags(client.search("ALL"))
    assert len(flags) == 2
    assert all(b"\\Seen" not in message_flags for message_flags in flags.values())


def test_imap_skips_messages_flagged_deleted_but_not_expunged(dovecot, dovecot_integration):
    # What a pass leaves when its EXPUNGE did not happen: already acked, not to be re-read.
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(integration.incoming_username, [raw_email(1), raw_email(2)])
    context = ssl.create_default_context(cadata=dovecot.ca_pem)
    with IMAPClient(dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=5) as client:
        client.login(integration.incoming_username, integration.incoming_password)
        client.select_folder("INBOX")
        client.add_flags(client.search("ALL")[:1], [b"\\Deleted"])

    assert [message.raw for message in fetch_all(integration)] == [raw_email(2)]


# Failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_wrong_password_is_an_auth_error(dovecot_integration, protocol):
    integration = dovecot_integration(protocol=protocol, encryption="ssl")
    integration.incoming_password = "not the password"

    started = time.monotonic()
    with pytest.raises(MailboxAuthError) as error:
        fetch_all(integration)

    assert integration.incoming_username in str(error.value)
    assert "Authentication failed" in str(error.value)  # the server's own words
    assert time.monotonic() - started < 2  # auth_failure_delay is off on the test server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_user_is_an_auth_error(dovecot_integration, protocol):
    integration = dovecot_integration(protocol=protocol, incoming_username="nobody@desk.test")

    with pytest.raises(MailboxAuthError, match="nobody@desk.test"):
        fetch_all(integration)


@pytest.mark.parametrize("encryption", ["ssl", "tls"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_untrusted_certificate_is_refused(dovecot_integration, protocol, encryption):
    # Without the test CA only the system's CAs are trusted: the self-signed cert fails.
    integration = dovecot_integration(protocol=protocol, encryption=encryption, ca_certificate="")

    with pytest.raises(MailboxError) as error:
        fetch_all(integration)

    assert "certificate" in str(error.value)
    assert "could not be verified" in str(error.value)
    assert not isinstance(error.value, MailboxAuthError)


@pytest.mark.parametrize("encryption", ["ssl", "tls"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_verification_turned_off_connects_to_an_untrusted_certificate(
    dovecot, dovecot_integration, protocol, encryption
):
    integration = dovecot_integration(
        protocol=protocol, encryption=encryption, ca_certificate="", verify_certificates=False
    )
    dovecot.deliver(integration.incoming_username, [raw_email(1)])

    assert [message.raw for message in fetch_all(integration)] == [raw_email(1)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_port_where_nothing_listens_fails_quickly(dovecot_integration, protocol):
    port = free_port()
    integration = dovecot_integration(protocol=protocol, encryption="ssl", incoming_port=port)

    started = time.monotonic()
    with pytest.raises(MailboxError) as error, open_mailbox(integration, timeout=1):
        pass

    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(error.value)
    assert "refused the connection" in str(error.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_never_answers_times_out(dovecot_integration, protocol):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never greets
        port = silent.getsockname()[1]
        integration = dovecot_integration(protocol=protocol, encryption="none", incoming_port=port)

        started = time.monotonic()
        with pytest.raises(MailboxError) as error:
            fetch_all(integration, timeout=0.5)

    assert time.monotonic() - started < 2
    assert "did not answer in time" in str(error.value)


class ServerWithoutStartTls:
    """A scripted server that greets and lists its capabilities without STARTTLS, and
    records every line a client sends, to prove the password never left in clear text."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.received: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(5)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ServerWithoutStartTls:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection, connection.makefile("rwb") as stream:
            greeting = b"* OK IMAP ready\r\n" if self.protocol == "imap" else b"+OK POP3 ready\r\n"
            stream.write(greeting)
            stream.flush()
            for line in stream:
                self.received.append(line)
                stream.write(self._answer(line))
                stream.flush()
                if line.split()[-1].upper() in (b"LOGOUT", b"QUIT"):
                    return

    def _answer(self, line: bytes) -> bytes:
        if self.protocol == "pop3":
            if line.strip().upper() == b"CAPA":
                return b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n"
            return b"+OK\r\n"
        tag, command = line.split()[:2]
        if command.upper() == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n"
        if command.upper() == b"LOGOUT":
            return b"* BYE\r\n" + tag + b" OK bye\r\n"
        return tag + b" BAD unexpected\r\n"


@pytest.mark.parametrize("encryption", ["tls", "tls1.2"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_starttls_is_required_when_the_encryption_says_so(
    dovecot_integration, protocol, encryption
):
    with ServerWithoutStartTls(protocol) as server:
        integration = dovecot_integration(
            protocol=protocol, encryption=encryption, incoming_port=server.port
        )
        with pytest.raises(MailboxError) as error:
            fetch_all(integration)

    assert "does not offer STARTTLS" in str(error.value)
    sent = b"".join(server.received)
    assert integration.incoming_password.encode() not in sent
    assert integration.incoming_username.encode() not in sent


def test_an_oauth_integration_that_needs_reconnect_is_not_even_connected_to():
    integration = EmailIntegration(incoming_protocol="google", incoming_username="a@b.test")
    integration.oauth_grant = OAuthGrant(
        integration=integration,
        needs_reconnect_since=timezone.now(),
        needs_reconnect_reason="Google refused the stored grant.",
    )

    with pytest.raises(MailboxError, match="Needs reconnect: Google refused the stored grant"):
        open_mailbox(integration)


# The server going away ---------------------------------------------------------------------


@pytest.fixture
def restart_dovecot_afterwards(dovecot) -> Iterator[None]:
    yield
    dovecot.start()  # a no-op when it runs; other tests share this server


@pytest.mark.usefixtures("restart_dovecot_afterwards")
def test_a_stopped_server_is_a_mailbox_error_and_mail_waits_for_its_return(
    dovecot, dovecot_integration
):
    # Both protocols in one test: stopping Dovecot takes about a second.
    integrations = [dovecot_integration(protocol=protocol) for protocol in PROTOCOLS]
    dovecot.stop()
    for integration in integrations:
        dovecot.deliver(integration.incoming_username, [raw_email(1)])
        with pytest.raises(MailboxError, match="refused the connection"):
            fetch_all(integration)

    dovecot.start()
    for integration in integrations:
        assert [message.raw for message in fetch_all(integration)] == [raw_email(1)]
