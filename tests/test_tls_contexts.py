"""TLS contexts are built once per distinct setting and shared (mailworker.transport.tls):
loading the system's CAs costs tens of milliseconds of CPU, which every pass and every IDLE
connect paid. Sharing must never mix two integrations' trust settings."""

from __future__ import annotations

import ssl

from integrations.models import EmailIntegration, Encryption
from mailworker.transport.tls import ssl_context_for
from tests.dovecot import _self_signed_certificate


def _integration(**fields: object) -> EmailIntegration:
    return EmailIntegration(
        **{"incoming_encryption": Encryption.SSL, "verify_certificates": True, **fields}
    )


def test_integrations_with_the_same_trust_share_one_context() -> None:
    first = ssl_context_for(_integration(name="one"))
    second = ssl_context_for(_integration(name="two", ca_certificate="  "))
    assert first is second
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname


def test_a_pasted_ca_verification_off_and_tls12_each_get_their_own(tmp_path) -> None:
    ca_pem, _certificate, _key = _self_signed_certificate(tmp_path)
    system = ssl_context_for(_integration())
    pasted = ssl_context_for(_integration(ca_certificate=ca_pem))
    unverified = ssl_context_for(_integration(verify_certificates=False))
    tls12 = ssl_context_for(_integration(incoming_encryption=Encryption.TLS12))
    assert len({id(system), id(pasted), id(unverified), id(tls12)}) == 4
    assert pasted.cert_store_stats()["x509_ca"] == 1  # only the pasted CA, not the system's
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
    assert tls12.minimum_version == ssl.TLSVersion.TLSv1_2
    # The others were left as built: nothing set for one integration reached another.
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname
    assert pasted.verify_mode == ssl.CERT_REQUIRED and pasted.check_hostname


def test_smtp_s_own_encryption_chooses_the_context() -> None:
    """Incoming plain SSL, outgoing "TLS 1.2 only": the SMTP connection gets the TLS 1.2
    context, and the mailbox's shared one is not changed for it."""
    integration = _integration(incoming_encryption=Encryption.SSL)
    outgoing = ssl_context_for(integration, encryption=Encryption.TLS12)
    incoming = ssl_context_for(integration)
    assert outgoing is not incoming
    assert outgoing.minimum_version == ssl.TLSVersion.TLSv1_2
    assert incoming is ssl_context_for(_integration(incoming_encryption=Encryption.SSL))
