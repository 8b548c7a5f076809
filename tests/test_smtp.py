"""The SMTP transport against a real aiosmtpd: every encryption, batches, and the errors an
admin reads."""

from __future__ import annotations

import socket
import time
from email.utils import make_msgid

import pytest

from mailworker.senders import Delivery, Envelope, sender_for
from mailworker.transport.errors import TransportError, TransportErrorKind
from tests.conftest import free_port

pytestmark = pytest.mark.django_db


def send_envelopes(integration, envelopes: list[Envelope], **options) -> list[Delivery]:
    """Through the registry, one session, as the outbox sends a chunk."""
    with sender_for(integration, **options) as sender:
        return sender.send(envelopes)


def small_email(to: str = "jane@customer.test", subject: str = "Hello") -> bytes:
    return (
        "From: Desk <desk@desk.test>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {make_msgid(domain='desk.test')}\r\n"
        "\r\n"
        "A short body.\r\n"
    ).encode()


def envelope(to: str = "jane@customer.test", **kwargs) -> Envelope:
    return Envelope(
        sender=kwargs.pop("sender", "desk@desk.test"),
        recipients=kwargs.pop("recipients", [to]),
        message=kwargs.pop("message", small_email(to)),
    )


@pytest.mark.parametrize("encryption", ["none", "ssl", "tls", "tls1.2"])
def test_each_encryption_logs_in_and_delivers(smtp_server, smtp_integration, encryption) -> None:
    integration = smtp_integration(encryption=encryption)
    message = small_email(subject=f"over {encryption}")
    smtp_server.clear()

    (delivery,) = send_envelopes(
        integration,
        [Envelope("desk@desk.test", ["jane@customer.test", "joe@customer.test"], message)],
    )

    assert delivery.accepted, delivery.error
    assert delivery.error is None
    assert delivery.response.startswith("250 2.0.0 Ok: queued as ")
    assert delivery.refused == {}
    (received,) = smtp_server.messages
    assert received.mail_from == "desk@desk.test"
    assert received.rcpt_tos == ["jane@customer.test", "joe@customer.test"]
    assert received.raw == message
    assert received.authenticated_as == "desk@desk.test"
    listener = {"none": "plain", "ssl": "tls", "tls": "starttls", "tls1.2": "starttls"}
    assert received.listener == listener[encryption]


def test_a_batch_of_200_goes_over_one_connection(smtp_server, smtp_integration) -> None:
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()

    deliveries = send_envelopes(
        integration, [envelope(f"user{n}@customer.test") for n in range(200)]
    )

    assert all(d.accepted for d in deliveries)
    assert len(smtp_server.messages) == 200
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == [
        f"user{n}@customer.test" for n in range(200)
    ]
    assert smtp_server.connections == 1


def test_a_wrong_password_is_an_authentication_failure(smtp_server, smtp_integration) -> None:
    integration = smtp_integration(encryption="tls", smtp_password="not the password")
    smtp_server.clear()

    with pytest.raises(TransportError) as caught:
        send_envelopes(integration, [envelope()])

    problem = caught.value
    assert problem.kind == TransportErrorKind.AUTHENTICATION
    assert problem.field == "smtp_password"
    assert not problem.temporary
    assert "Authentication failed" in problem.message
    assert "535" in problem.message
    assert "desk@desk.test" in problem.message
    assert smtp_server.messages == []


@pytest.mark.parametrize("encryption", ["ssl", "tls"])
def test_an_untrusted_certificate_stops_before_the_password(
    smtp_server, smtp_integration, encryption
) -> None:
    integration = smtp_integration(encryption=encryption, ca_certificate="")
    smtp_server.clear()

    with pytest.raises(TransportError) as caught:
        send_envelopes(integration, [envelope()])

    problem = caught.value
    assert problem.kind == TransportErrorKind.CERTIFICATE
    assert problem.field == "ca_certificate"
    assert not problem.temporary
    assert "not trusted" in problem.message
    assert "Paste the CA certificate" in problem.message
    assert "turn off certificate verification" in problem.message
    assert smtp_server.messages == []


def test_verification_off_accepts_the_self_signed_certificate(
    smtp_server, smtp_integration
) -> None:
    integration = smtp_integration(encryption="ssl", ca_certificate="", verify_certificates=False)

    (delivery,) = send_envelopes(integration, [envelope()])

    assert delivery.accepted


def test_a_refused_connection_is_temporary(smtp_integration) -> None:
    integration = smtp_integration(encryption="none", smtp_port=free_port())

    with pytest.raises(TransportError) as caught:
        send_envelopes(integration, [envelope()])

    problem = caught.value
    assert problem.kind == TransportErrorKind.CONNECTION_REFUSED
    assert problem.temporary
    assert problem.field in ("smtp_host", "smtp_port")
    assert "refused the connection" in problem.message


def test_a_server_that_never_greets_times_out(smtp_integration) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        integration = smtp_integration(encryption="none", smtp_port=silent.getsockname()[1])

        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            send_envelopes(integration, [envelope()], timeout=0.5)

    assert time.monotonic() - started < 5
    problem = caught.value
    assert problem.kind == TransportErrorKind.TIMEOUT
    assert problem.temporary
    assert "did not answer in time" in problem.message


def test_refused_recipients_are_listed_and_the_others_delivered(
    smtp_server, smtp_integration
) -> None:
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()

    some, every = send_envelopes(
        integration,
        [
            envelope(recipients=["nobody@refused.test", "jane@customer.test"]),
            envelope(recipients=["a@refused.test", "b@refused.test"]),
        ],
    )

    assert some.accepted
    assert list(some.refused) == ["nobody@refused.test"]
    assert some.refused["nobody@refused.test"].startswith("550 5.1.1")
    assert not every.accepted
    assert set(every.refused) == {"a@refused.test", "b@refused.test"}
    assert every.error.kind == TransportErrorKind.RECIPIENT_REFUSED
    assert every.error.field == ""
    assert not every.error.temporary
    assert "550 5.1.1" in every.error.message
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ["jane@customer.test"]


def test_a_blocked_sender_fails_that_email_only(smtp_server, smtp_integration) -> None:
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()

    blocked, fine = send_envelopes(
        integration, [envelope(sender="desk@blocked.test"), envelope("joe@customer.test")]
    )

    assert not blocked.accepted
    assert blocked.error.kind == TransportErrorKind.SENDER_REFUSED
    assert blocked.error.field == "email_address"
    assert not blocked.error.temporary
    assert "553" in blocked.error.message
    assert "desk@blocked.test" in blocked.error.message
    assert fine.accepted
    assert [m.rcpt_tos for m in smtp_server.messages] == [["joe@customer.test"]]


def test_starttls_is_required_when_chosen(smtp_server, smtp_integration) -> None:
    # The plain listener offers no STARTTLS: going on would send the password in clear text.
    integration = smtp_integration(encryption="tls", smtp_port=smtp_server.plain_port)
    smtp_server.clear()

    with pytest.raises(TransportError) as caught:
        send_envelopes(integration, [envelope()])

    problem = caught.value
    assert problem.kind == TransportErrorKind.TLS_HANDSHAKE
    assert problem.field == "smtp_encryption"
    assert not problem.temporary
    assert "does not offer STARTTLS" in problem.message
    assert smtp_server.messages == []


def test_a_stopped_server_is_a_temporary_failure(smtp_server, smtp_integration) -> None:
    integration = smtp_integration(encryption="ssl")
    smtp_server.stop()
    try:
        with pytest.raises(TransportError) as caught:
            send_envelopes(integration, [envelope()])
    finally:
        smtp_server.start()

    assert caught.value.kind in (
        TransportErrorKind.CONNECTION_REFUSED,
        TransportErrorKind.CONNECTION_LOST,
    )
    assert caught.value.temporary
    (delivery,) = send_envelopes(integration, [envelope()])
    assert delivery.accepted


def test_a_connection_lost_halfway_fails_the_rest_temporarily(
    smtp_server, smtp_integration, monkeypatch
) -> None:
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()
    original = smtp_server._record

    def record_then_stop(message):
        number = original(message)
        if len(smtp_server.messages) == 3:
            # Runs in the server's loop: drop every connection right after the third DATA.
            for protocol in list(smtp_server._protocols):
                protocol.transport.abort()
        return number

    monkeypatch.setattr(smtp_server, "_record", record_then_stop)

    deliveries = send_envelopes(integration, [envelope(f"u{n}@customer.test") for n in range(6)])

    assert len(deliveries) == 6
    assert [d.accepted for d in deliveries[:2]] == [True, True]
    # The third arrived, but its answer was lost with the connection: it is retried.
    for delivery in deliveries[2:]:
        assert not delivery.accepted
        assert delivery.error.kind in (
            TransportErrorKind.CONNECTION_LOST,
            TransportErrorKind.TIMEOUT,
        )
        assert delivery.error.temporary
    assert len(smtp_server.messages) == 3


def test_nothing_to_send_opens_no_connection(smtp_server, smtp_integration) -> None:
    integration = smtp_integration(encryption="tls")
    smtp_server.clear()

    assert send_envelopes(integration, []) == []
    assert smtp_server.connections == 0


def test_1000_small_emails_over_one_connection(smtp_server, smtp_integration, capsys) -> None:
    integration = smtp_integration(encryption="tls")
    envelopes = [envelope(f"user{n}@customer.test") for n in range(1000)]
    smtp_server.clear()

    started = time.perf_counter()
    deliveries = send_envelopes(integration, envelopes)
    elapsed = time.perf_counter() - started

    assert all(d.accepted for d in deliveries)
    assert len(smtp_server.messages) == 1000
    assert smtp_server.connections == 1
    with capsys.disabled():
        print(f"\n1000 small emails over one STARTTLS connection: {elapsed:.2f} s")
