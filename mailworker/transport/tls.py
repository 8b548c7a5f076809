"""TLS for every transport, and the words an admin reads when a connection fails.

IMAP, POP3 and SMTP build their `ssl.SSLContext` here, so they trust the same
certificates, and explain a refused connection or a bad certificate the same way.
"""

from __future__ import annotations

import socket
import ssl
from functools import lru_cache

from integrations.models import EmailIntegration, Encryption


def uses_tls(integration: EmailIntegration) -> bool:
    return integration.incoming_encryption != Encryption.NONE


def uses_starttls(integration: EmailIntegration) -> bool:
    """STARTTLS: the connection starts in clear text and must be upgraded before login."""
    return integration.incoming_encryption in (Encryption.TLS, Encryption.TLS12)


def ssl_context_for(integration: EmailIntegration, *, encryption: str = "") -> ssl.SSLContext:
    """The context every TLS connection of this integration's mailbox (or, with the
    outgoing `encryption`, its SMTP server) uses. Shared: callers must not change it.

    With a CA certificate pasted on the integration, only that CA is trusted, not the
    system's: the admin has said who signs this server's certificate, and a certificate
    from any other CA for the same name is then more likely an interception than a change.
    Without one, the system's CAs are trusted as usual.
    """
    return _context(
        ca_pem=integration.ca_certificate.strip(),
        verify=integration.verify_certificates,
        tls12=(encryption or integration.incoming_encryption) == Encryption.TLS12,
    )


# One context per distinct setting, built once per process: loading the system's CAs took
# 39 ms of CPU here, paid by every pass and every IDLE connect (a thousand mailboxes on a
# public provider: 39 s of CPU a round). A process started after the system's CA bundle
# changed sees the new one.
@lru_cache(maxsize=256)
def _context(*, ca_pem: str, verify: bool, tls12: bool) -> ssl.SSLContext:
    # With cadata=None the system's CAs are loaded instead.
    context = ssl.create_default_context(cadata=ca_pem or None)
    if not verify:
        # Only because the admin turned verification off (a test server): anyone on the
        # path can then read the password.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls12:
        # Python's default context already refuses anything older than TLS 1.2 (3.10+); say
        # it explicitly so the choice holds whatever a future default becomes.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_connection_error(exc: BaseException, *, host: str, port: int, action: str) -> str:
    """One sentence for an admin: where, what was being done, and what went wrong."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"The server certificate of {where} could not be verified while {action} "
            f"({exc.verify_message}). Paste the CA certificate that signed it on the "
            "integration, or fix the server's certificate."
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {where} while {action}: {exc.reason or exc}."
    if isinstance(exc, ConnectionRefusedError):
        return f"{where} refused the connection while {action}: check the server and the port."
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time while {action}."
    if isinstance(exc, socket.gaierror):
        return f"The server name {host!r} could not be resolved while {action}: {exc.strerror}."
    if isinstance(exc, OSError):
        return f"The connection to {where} failed while {action}: {exc.strerror or exc}."
    return f"{where} failed while {action}: {exc}."
