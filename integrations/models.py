"""An email integration: one mailbox the desk reads (incoming), sends through (outgoing), or both.

The fields mirror SysAid's Settings > Email > Integration page: the general part, the
Incoming Emails section (with its advanced rules) and the Outgoing Emails section.
"""

from __future__ import annotations

import codecs

from cryptography import x509
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from integrations.encryption import EncryptedTextField
from integrations.validation import (
    MAX_IGNORED_SENDERS,
    MICROSOFT_BASIC_AUTH_MESSAGE,
    is_microsoft_basic_auth_host,
    validate_sender_list,
    validate_subject_regex,
)
from servicedesk.control_characters import refuse_control_characters


class IncomingProtocol(models.TextChoices):
    IMAP = "imap", "IMAP"
    POP3 = "pop3", "POP3"
    MICROSOFT365 = "microsoft365", "Microsoft 365 (OAuth 2.0)"
    GOOGLE = "google", "Google (OAuth 2.0)"
    MICROSOFT_GRAPH = "microsoft_graph", "Microsoft 365 (Graph)"


OAUTH_PROTOCOLS = (
    IncomingProtocol.MICROSOFT365,
    IncomingProtocol.GOOGLE,
    IncomingProtocol.MICROSOFT_GRAPH,
)
# Signed in at Microsoft Entra (msal): the tenant is required.
MICROSOFT_PROTOCOLS = (IncomingProtocol.MICROSOFT365, IncomingProtocol.MICROSOFT_GRAPH)
GRAPH_PORT = 443


class MailboxAccess(models.TextChoices):
    """How an OAuth 2.0 integration reads its mailbox (both log in with XOAUTH2)."""

    IMAP = "imap", "IMAP"
    POP3 = "pop3", "POP3"


class OAuthAccess(models.TextChoices):
    """Whose token an OAuth 2.0 integration holds."""

    DELEGATED = "delegated", "A user signs in (authorization code)"
    APP_ONLY = "app", "App-only (Microsoft: client credentials; Google: service account)"


class StrangerPolicy(models.TextChoices):
    """What an email naming "#N" does when its sender is not on record N (not its requester,
    not an address its emails came from or went to, not staff)."""

    NEW_RECORD = "new_record", "Open a new record (the record stays untouched)"
    INTERNAL_NOTE = (
        "internal_note",
        "Add it to the record as an internal note (no status change, no email)",
    )
    QUARANTINE = "quarantine", "Hold it in quarantine"


class BulkMailPolicy(models.TextChoices):
    """What mailing-list and bulk mail (List-Id, Precedence: bulk/list) that names no record
    does."""

    RECORD = "record", "Open a record like any other email (never answered automatically)"
    IGNORE = "ignore", "Ignore it (kept in the incoming email log)"
    QUARANTINE = "quarantine", "Hold it in quarantine"


class DmarcFailurePolicy(models.TextChoices):
    """What an email whose sender failed DMARC (as the trusted receiving server says) does."""

    ACCEPT = "accept", "Accept"
    MARK = "mark", "Accept and show “sender not verified” on the record"
    QUARANTINE = "quarantine", "Hold it in quarantine"


class OutgoingProtocol(models.TextChoices):
    SMTP = "smtp", "SMTP"
    MICROSOFT_GRAPH = "microsoft_graph", "Microsoft 365 (Graph)"


class Encryption(models.TextChoices):
    NONE = "none", "None"
    SSL = "ssl", "SSL/TLS (from the first byte)"
    TLS = "tls", "STARTTLS"
    TLS12 = "tls1.2", "STARTTLS, TLS 1.2 or newer"


class TransferEncoding(models.TextChoices):
    QUOTED_PRINTABLE = "quoted-printable", "Quoted-printable"
    BASE64 = "base64", "Base64"
    EIGHT_BIT = "8bit", "8bit"


class ContentType(models.TextChoices):
    HTML = "html", "HTML (with a plain-text part)"
    PLAIN = "plain", "Plain text"


# Ports used when the admin leaves the port empty, by protocol and encryption.
DEFAULT_INCOMING_PORTS = {
    (MailboxAccess.IMAP, Encryption.SSL): 993,
    (MailboxAccess.IMAP, Encryption.NONE): 143,
    (MailboxAccess.IMAP, Encryption.TLS): 143,
    (MailboxAccess.IMAP, Encryption.TLS12): 143,
    (MailboxAccess.POP3, Encryption.SSL): 995,
    (MailboxAccess.POP3, Encryption.NONE): 110,
    (MailboxAccess.POP3, Encryption.TLS): 110,
    (MailboxAccess.POP3, Encryption.TLS12): 110,
}
DEFAULT_SMTP_PORTS = {
    Encryption.SSL: 465,
    Encryption.NONE: 25,
    Encryption.TLS: 587,
    Encryption.TLS12: 587,
}
# Where the OAuth 2.0 providers serve mail when the admin leaves the server empty.
DEFAULT_OAUTH_SERVERS = {
    (IncomingProtocol.MICROSOFT365, MailboxAccess.IMAP): "outlook.office365.com",
    (IncomingProtocol.MICROSOFT365, MailboxAccess.POP3): "outlook.office365.com",
    (IncomingProtocol.GOOGLE, MailboxAccess.IMAP): "imap.gmail.com",
    (IncomingProtocol.GOOGLE, MailboxAccess.POP3): "pop.gmail.com",
}

port_validators = [MinValueValidator(1), MaxValueValidator(65535)]


class EmailIntegration(models.Model):
    # General
    name = models.CharField(
        max_length=100,
        unique=True,
        help_text="Shown in the address list when sending.",
        # It is the display name of the desk's From header.
        validators=[refuse_control_characters],
    )
    description = models.TextField(blank=True)
    is_default = models.BooleanField("use as default email integration", default=False)
    incoming_enabled = models.BooleanField("incoming emails", default=False)
    outgoing_enabled = models.BooleanField("outgoing emails", default=False)

    # Incoming emails
    incoming_protocol = models.CharField(
        "protocol", max_length=20, choices=IncomingProtocol.choices, default=IncomingProtocol.IMAP
    )
    oauth_mailbox_access = models.CharField(
        "mailbox access",
        max_length=4,
        choices=MailboxAccess.choices,
        default=MailboxAccess.IMAP,
        help_text="OAuth 2.0 only: read the mailbox over IMAP or POP3.",
    )
    incoming_server = models.CharField("server", max_length=255, blank=True)
    incoming_port = models.PositiveIntegerField(
        "port",
        null=True,
        blank=True,
        validators=port_validators,
        help_text="Leave empty for the usual port of the protocol and encryption.",
    )
    incoming_encryption = models.CharField(
        "encryption", max_length=6, choices=Encryption.choices, default=Encryption.SSL
    )
    incoming_username = models.CharField(
        "username",
        max_length=255,
        blank=True,
        help_text="The mailbox's login, often its email address. Microsoft 365 (Graph): the "
        "address of the mailbox to read, a user's or a shared mailbox.",
    )
    incoming_password = EncryptedTextField("password", blank=True)
    incoming_folder = models.CharField(
        "folder",
        max_length=255,
        default="INBOX",
        help_text="IMAP, and Microsoft 365 (Graph): a folder's display name, or a path of them "
        "(Support/Tickets); INBOX is the Inbox.",
    )
    graph_processed_folder = models.CharField(
        "after import, move emails to",
        max_length=255,
        blank=True,
        help_text="Microsoft 365 (Graph) only: the folder (display name or path) imported "
        "emails are moved to. Empty: they are deleted (to Deleted Items).",
    )
    poll_interval_seconds = models.PositiveIntegerField(
        "poll interval (seconds)",
        default=60,
        validators=[MinValueValidator(10), MaxValueValidator(86400)],
    )
    use_idle = models.BooleanField(
        "push delivery (IMAP IDLE)",
        default=True,
        help_text="IMAP only: fetch new mail as soon as the server announces it, when the "
        "server supports IDLE. Polling at the interval above stays as the safety net.",
    )

    # Incoming emails: advanced
    use_last_record_number = models.BooleanField(
        "use the last record number in the subject",
        default=False,
        help_text="Off: the first number (#12 in “Re: #12 was merged into #15”) is used.",
    )
    search_body_for_record_number = models.BooleanField(
        "extend the record number search to the body", default=False
    )
    change_status_to = models.ForeignKey(
        "records.Status",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name="on reply, change status to",
        help_text="Empty: do not change the status.",
    )
    unless_status_in = models.ManyToManyField(
        "records.Status",
        blank=True,
        related_name="+",
        verbose_name="unless the record's status is",
    )
    ignore_senders = models.JSONField(
        "ignore emails from",
        default=list,
        blank=True,
        help_text="Addresses and domains, at most 20.",
    )
    ignore_subject_regex = models.CharField(
        "ignore emails whose subject matches", max_length=1000, blank=True
    )
    whitelist_senders = models.JSONField(
        "accept only emails from",
        default=list,
        blank=True,
        help_text="Addresses and domains. Empty: accept every sender.",
    )
    duplicate_exempt_senders = models.JSONField(
        "never treat as duplicates emails from",
        default=list,
        blank=True,
        help_text="Addresses, or usernames of users.",
    )
    forward_ignored_to = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="+",
        verbose_name="forward ignored emails to",
    )
    copy_incoming_to = models.EmailField(
        "send a copy of incoming emails to", blank=True, help_text="Enterprise edition."
    )
    remove_emojis = models.BooleanField("remove emojis from subject and body", default=True)

    bulk_mail_policy = models.CharField(
        "mailing-list and bulk mail that names no record",
        max_length=20,
        choices=BulkMailPolicy.choices,
        default=BulkMailPolicy.RECORD,
    )

    # Incoming emails: trust (who may write into a record; see README's Security model)
    stranger_policy = models.CharField(
        "“#N” from someone who is not on record N",
        max_length=20,
        choices=StrangerPolicy.choices,
        default=StrangerPolicy.NEW_RECORD,
        help_text="Anyone can type a record number. Someone who is not the requester, not an "
        "address the record's emails came from or went to, and not staff never writes into "
        "the record's conversation; nothing they wrote is emailed to the requester.",
    )
    trusted_authserv_ids = models.JSONField(
        "trust Authentication-Results from",
        default=list,
        blank=True,
        help_text="The authserv-id your receiving mail server writes in its "
        "Authentication-Results header (RFC 8601), e.g. mx.example.com. Any other such header "
        "is the sender's own words and is ignored. Empty: senders are not verified.",
    )
    dmarc_failure_policy = models.CharField(
        "when the sender fails DMARC",
        max_length=20,
        choices=DmarcFailurePolicy.choices,
        default=DmarcFailurePolicy.MARK,
        help_text="As the trusted server above reports it.",
    )

    # OAuth 2.0 (Microsoft 365, Google): the app; the tokens are its OAuthGrant.
    oauth_access = models.CharField(
        "access",
        max_length=10,
        choices=OAuthAccess.choices,
        default=OAuthAccess.DELEGATED,
        help_text="Delegated: press Connect and sign in as the mailbox's user. App-only: the "
        "app reads the mailbox by itself (a Microsoft shared mailbox, or Google Workspace with "
        "domain-wide delegation).",
    )
    oauth_tenant = models.CharField("tenant", max_length=255, blank=True)
    oauth_client_id = models.CharField("client id", max_length=255, blank=True)
    oauth_client_secret = EncryptedTextField("client secret", blank=True)
    oauth_client_certificate = EncryptedTextField(
        "client certificate (PEM)",
        blank=True,
        help_text="Microsoft, instead of a client secret: the certificate uploaded to the app "
        "registration and its private key, both PEM, pasted together.",
    )
    oauth_service_account_key = EncryptedTextField(
        "service account key (JSON)",
        blank=True,
        help_text="Google app-only: the JSON key of a service account allowed domain-wide "
        "delegation for https://mail.google.com/.",
    )
    # Outgoing emails
    outgoing_protocol = models.CharField(
        "protocol", max_length=20, choices=OutgoingProtocol.choices, default=OutgoingProtocol.SMTP
    )
    email_address = models.EmailField(
        "email address",
        blank=True,
        help_text="The From address of emails sent. Microsoft 365 (Graph): the mailbox that "
        "sends (its Sent Items keep a copy), a user's or a shared mailbox the app may send as.",
    )
    smtp_host = models.CharField("SMTP host", max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField(
        "port",
        null=True,
        blank=True,
        validators=port_validators,
        help_text="Leave empty for the usual port of the encryption.",
    )
    smtp_encryption = models.CharField(
        "encryption", max_length=6, choices=Encryption.choices, default=Encryption.TLS
    )
    smtp_username = models.CharField("username", max_length=255, blank=True)
    smtp_password = EncryptedTextField("password", blank=True)
    outgoing_encoding = models.CharField(
        "encoding",
        max_length=20,
        choices=TransferEncoding.choices,
        default=TransferEncoding.QUOTED_PRINTABLE,
    )
    outgoing_content_type = models.CharField(
        "content type", max_length=5, choices=ContentType.choices, default=ContentType.HTML
    )
    outgoing_charset = models.CharField("charset", max_length=40, default="utf-8")

    # TLS, for both directions
    verify_certificates = models.BooleanField(
        "verify server certificates",
        default=True,
        help_text="Turn off only for a test server; the connection can then be intercepted.",
    )
    ca_certificate = models.TextField(
        "CA certificate (PEM)",
        blank=True,
        help_text="For servers whose certificate comes from a private CA.",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="one_default_email_integration",
                violation_error_message="Another integration is already the default.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    # What the integration does --------------------------------------------------------

    @property
    def direction(self) -> str:
        if self.incoming_enabled and self.outgoing_enabled:
            return "both"
        if self.incoming_enabled:
            return "incoming"
        if self.outgoing_enabled:
            return "outgoing"
        return "off"

    @property
    def uses_oauth(self) -> bool:
        return self.incoming_protocol in OAUTH_PROTOCOLS

    @property
    def uses_app_only_oauth(self) -> bool:
        return self.uses_oauth and self.oauth_access == OAuthAccess.APP_ONLY

    @property
    def grant(self) -> OAuthGrant:
        """The integration's tokens; an empty, unsaved grant when it was never connected.
        Callers that read it for many integrations select_related("oauth_grant")."""
        try:
            return self.oauth_grant
        except OAuthGrant.DoesNotExist:
            return OAuthGrant(integration=self)

    @property
    def needs_reconnect(self) -> bool:
        return self.grant.needs_reconnect

    @property
    def oauth_mailbox(self) -> str:
        """The mailbox an OAuth 2.0 token must belong to; XOAUTH2 logs in as it."""
        return (self.incoming_username or self.email_address).strip()

    @property
    def oauth_connected(self) -> bool:
        return self.grant.connected

    @property
    def uses_graph(self) -> bool:
        return self.incoming_protocol == IncomingProtocol.MICROSOFT_GRAPH

    @property
    def sends_with_graph(self) -> bool:
        return self.outgoing_protocol == OutgoingProtocol.MICROSOFT_GRAPH

    @property
    def uses_graph_token(self) -> bool:
        """Its OAuth 2.0 token is for Microsoft Graph (a token has one audience): either
        direction uses Graph. Such a token cannot log in to IMAP, POP3 or SMTP."""
        return self.uses_graph or (self.outgoing_enabled and self.sends_with_graph)

    @property
    def mailbox_protocol(self) -> str:
        """IMAP, POP3 or Microsoft Graph: what the mail engine speaks to the mailbox."""
        if self.uses_graph:
            return IncomingProtocol.MICROSOFT_GRAPH
        if self.uses_oauth:
            return self.oauth_mailbox_access
        return self.incoming_protocol

    @property
    def effective_incoming_server(self) -> str:
        if self.uses_graph:
            # Graph has one address for every tenant (a setting, for national clouds).
            return settings.MICROSOFT_GRAPH_URL
        if self.incoming_server or not self.uses_oauth:
            return self.incoming_server
        return DEFAULT_OAUTH_SERVERS[(self.incoming_protocol, self.oauth_mailbox_access)]

    @property
    def effective_incoming_port(self) -> int:
        if self.uses_graph:
            return GRAPH_PORT
        if self.incoming_port:
            return self.incoming_port
        return DEFAULT_INCOMING_PORTS[(self.mailbox_protocol, self.incoming_encryption)]

    @property
    def effective_smtp_port(self) -> int:
        return self.smtp_port or DEFAULT_SMTP_PORTS[self.smtp_encryption]

    @property
    def address(self) -> str:
        """The address shown for the integration: the one it sends as, else the one it reads."""
        if self.outgoing_enabled and self.email_address:
            return self.email_address
        return self.incoming_username if self.incoming_enabled else self.email_address

    @property
    def has_incoming_password(self) -> bool:
        return bool(self.incoming_password)

    @property
    def has_smtp_password(self) -> bool:
        return bool(self.smtp_password)

    # Rules every integration follows -------------------------------------------------

    def clean(self) -> None:
        errors: dict[str, list[ValidationError]] = {}

        def add(field: str, message: str, **params: object) -> None:
            errors.setdefault(field, []).append(ValidationError(message, params=params or None))

        if self.outgoing_enabled and self.sends_with_graph and not self.incoming_enabled:
            # Sending alone through Graph signs in with the Graph app: its OAuth settings and
            # grant are those of the protocol Microsoft 365 (Graph).
            self.incoming_protocol = IncomingProtocol.MICROSOFT_GRAPH
        if not (self.incoming_enabled or self.outgoing_enabled):
            add("incoming_enabled", "Turn on Incoming Emails, Outgoing Emails, or both.")
        if self.incoming_enabled:
            self._clean_incoming(add)
        if self.outgoing_enabled:
            self._clean_outgoing(add)
        self._clean_advanced(errors, add)
        if self.ca_certificate.strip():
            try:
                x509.load_pem_x509_certificates(self.ca_certificate.strip().encode())
            except ValueError:
                add(
                    "ca_certificate",
                    "This is not a PEM certificate: paste the text from -----BEGIN "
                    "CERTIFICATE----- to -----END CERTIFICATE-----.",
                )
        if errors:
            raise ValidationError(errors)

    def _clean_incoming(self, add) -> None:
        if self.uses_graph and "@" not in self.incoming_username:
            add(
                "incoming_username",
                "Enter the address of the mailbox to read (a user's or a shared mailbox), "
                "e.g. support@contoso.com.",
            )
        if not self.uses_oauth:
            if not self.incoming_server.strip():
                add("incoming_server", "Enter the mail server's host name, e.g. imap.example.com.")
            elif is_microsoft_basic_auth_host(self.incoming_server):
                add("incoming_protocol", MICROSOFT_BASIC_AUTH_MESSAGE, server=self.incoming_server)
            if not self.incoming_password:
                add("incoming_password", "Enter the mailbox password.")
        if not self.incoming_username.strip():
            add("incoming_username", "Enter the mailbox's username (often its email address).")
        if self.mailbox_protocol == MailboxAccess.IMAP and not self.incoming_folder.strip():
            add("incoming_folder", "Enter the IMAP folder to read, e.g. INBOX.")
        if self.uses_oauth and not self.oauth_client_id.strip():
            add("oauth_client_id", "Enter the client id of the app registered with the provider.")
        if self.uses_graph and not self.incoming_folder.strip():
            add("incoming_folder", "Enter the folder to read, e.g. Inbox.")
        if self.incoming_protocol in MICROSOFT_PROTOCOLS and not self.oauth_tenant.strip():
            add("oauth_tenant", "Enter the Microsoft 365 tenant (its id or domain).")
        if self.uses_oauth:
            self._clean_oauth_credentials(add)

    def _clean_oauth_credentials(self, add) -> None:
        # Imported here: integrations.oauth builds on this module.
        from integrations.oauth.credentials import (
            certificate_problem,
            service_account_key_problem,
        )

        if self.oauth_client_certificate:
            problem = certificate_problem(self.oauth_client_certificate)
            if problem:
                add("oauth_client_certificate", problem)
        if self.oauth_service_account_key:
            problem = service_account_key_problem(self.oauth_service_account_key)
            if problem:
                add("oauth_service_account_key", problem)
        if (
            self.incoming_protocol == IncomingProtocol.GOOGLE
            and self.oauth_access == OAuthAccess.APP_ONLY
            and not self.oauth_service_account_key
        ):
            add(
                "oauth_service_account_key",
                "Paste the JSON key of the service account: Google's app-only access signs "
                "in with it.",
            )

    def _clean_outgoing(self, add) -> None:
        if not self.email_address:
            add("email_address", "Enter the address emails are sent from.")
        if self.sends_with_graph:
            self._clean_graph_outgoing(add)
        else:
            self._clean_smtp(add)
        try:
            codecs.lookup(self.outgoing_charset)
        except LookupError:
            add(
                "outgoing_charset",
                "Unknown charset %(charset)s; utf-8 is the usual choice.",
                charset=self.outgoing_charset,
            )

    def _clean_smtp(self, add) -> None:
        if not self.smtp_host.strip():
            add("smtp_host", "Enter the SMTP server's host name, e.g. smtp.example.com.")
        elif is_microsoft_basic_auth_host(self.smtp_host) and self.uses_graph:
            # The Graph token has Graph's audience: SMTP's XOAUTH2 would refuse it.
            add(
                "outgoing_protocol",
                "Incoming Emails reads through Microsoft 365 (Graph), whose token cannot sign "
                "in to Microsoft's SMTP: choose Microsoft 365 (Graph) here too.",
            )
        elif (
            is_microsoft_basic_auth_host(self.smtp_host)
            and self.incoming_protocol != IncomingProtocol.MICROSOFT365
        ):
            add(
                "smtp_host",
                MICROSOFT_BASIC_AUTH_MESSAGE
                + " SMTP then signs in with the same OAuth 2.0 connection.",
                server=self.smtp_host,
            )
        if self.smtp_username and not self.smtp_password:
            add("smtp_password", "Enter the SMTP password, or clear the username.")

    def _clean_graph_outgoing(self, add) -> None:
        """Sending through Graph signs in with the integration's Graph app: incoming, when on,
        must read through Graph too (IMAP and POP3 need a token of another audience)."""
        if self.incoming_enabled and not self.uses_graph:
            add(
                "outgoing_protocol",
                "Microsoft 365 (Graph) sends with a Microsoft Graph token, which %(protocol)s "
                "cannot log in with: choose Microsoft 365 (Graph) for Incoming Emails too, or "
                "SMTP here.",
                protocol=IncomingProtocol(self.incoming_protocol).label,
            )
            return
        if not self.incoming_enabled:
            if not self.oauth_tenant.strip():
                add("oauth_tenant", "Enter the Microsoft 365 tenant (its id or domain).")
            if not self.oauth_client_id.strip():
                add("oauth_client_id", "Enter the client id of the app registered with Microsoft.")
            self._clean_oauth_credentials(add)

    def _clean_advanced(self, errors, add) -> None:
        for field in ("ignore_senders", "whitelist_senders", "duplicate_exempt_senders"):
            value = getattr(self, field)
            if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
                add(field, "Enter a list of addresses and domains.")
                setattr(self, field, [])
        for field, limit in (
            ("ignore_senders", MAX_IGNORED_SENDERS),
            ("whitelist_senders", None),
        ):
            if field in errors:
                continue
            try:
                setattr(
                    self, field, validate_sender_list(list(getattr(self, field) or []), limit=limit)
                )
            except ValidationError as exc:
                errors.setdefault(field, []).append(exc)
        # Exempt senders may be usernames as well as addresses.
        self.duplicate_exempt_senders = sorted(
            {
                entry.strip().lower()
                for entry in self.duplicate_exempt_senders or []
                if entry.strip()
            }
        )
        try:
            validate_subject_regex(self.ignore_subject_regex)
        except ValidationError as exc:
            errors.setdefault("ignore_subject_regex", []).append(exc)


class OAuthGrant(models.Model):
    """What an OAuth 2.0 provider gave an integration: its tokens and whose they are, and
    whether the provider has since refused them ("needs reconnect").

    One per integration, created by the first connect or token. Written with update() on
    the row (integrations/oauth/services.py), never by the integration's form.
    """

    integration = models.OneToOneField(
        EmailIntegration, on_delete=models.CASCADE, related_name="oauth_grant"
    )
    refresh_token = EncryptedTextField(blank=True)
    access_token = EncryptedTextField(blank=True)
    access_token_expires_at = models.DateTimeField(null=True, blank=True)
    account = models.CharField(
        max_length=255, blank=True, help_text="The account the token belongs to."
    )
    # Set when the provider refused the stored grant (consent revoked, password changed,
    # secret expired): polling stops until an admin connects again, which clears them.
    needs_reconnect_reason = models.TextField(blank=True)
    needs_reconnect_since = models.DateTimeField(null=True, blank=True)
    needs_reconnect_notified_at = models.DateTimeField(
        null=True, blank=True, help_text="When admins were told to connect again."
    )

    class Meta:
        verbose_name = "OAuth grant"

    def __str__(self) -> str:
        return f"OAuth grant of {self.integration_id}"

    @property
    def needs_reconnect(self) -> bool:
        return self.needs_reconnect_since is not None

    @property
    def connected(self) -> bool:
        return bool(self.refresh_token or self.access_token)
