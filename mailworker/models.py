"""What the mail engine keeps about itself."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class WorkerHeartbeat(models.Model):
    """The last time each Celery worker ran the heartbeat task (read by /healthz)."""

    hostname = models.CharField(max_length=255, unique=True)
    beat_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["-beat_at"], name="heartbeat_beat_at")]

    def __str__(self) -> str:
        return f"{self.hostname} at {self.beat_at:%Y-%m-%d %H:%M:%S}"


class OutboxEmail(models.Model):
    """An email the desk will send, written in the same transaction as the event that caused
    it. The sending side (SMTP, retries) drains the rows that are pending."""

    class Kind(models.TextChoices):
        SYSTEM_ALERT = "system_alert", "System alert"
        TEST = "test", "Test email"
        FORWARD_IGNORED = "forward_ignored", "Ignored email forwarded"
        COPY_INCOMING = "copy_incoming", "Copy of an incoming email"
        SIZE_NOTICE = "size_notice", "Notice: email too large"
        NOTIFICATION = "notification", "Notification"
        REPLY = "reply", "Reply by an agent"
        INVITATION = "invitation", "Invitation to the desk"
        PASSWORD_RESET = "password_reset", "Password reset link"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SUPPRESSED = "suppressed", "Not sent (guard)"
        BOUNCED = "bounced", "Bounced"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    integration = models.ForeignKey(
        "integrations.EmailIntegration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The integration the email is about (and, by default, sends it).",
    )
    # The reverse relation lets the record page list the emails held back about a record
    # (records reads the outbox through it and never imports the mail engine).
    record = models.ForeignKey(
        "records.ServiceRecord",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="outbox_emails",
    )
    to_addresses = models.JSONField(default=list)
    # An agent's reply: Cc goes in the header, Bcc only in the envelope (never a header).
    cc_addresses = models.JSONField(default=list, blank=True)
    bcc_addresses = models.JSONField(default=list, blank=True)
    # Automatic emails go one recipient a row, so the per-recipient cap is one indexed count.
    recipient = models.CharField(max_length=320, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    text_body = models.TextField(blank=True)
    attached_email = models.BinaryField(
        blank=True, default=b"", help_text="The raw email forwarded or copied, sent as .eml."
    )
    html_body = models.TextField(blank=True)
    in_reply_to = models.CharField(max_length=998, blank=True)
    references = models.JSONField(default=list, blank=True)
    # The Message-ID and sender are fixed when queued (the message log and threading need
    # them at once); the bytes are composed by the first send attempt, off the path that
    # imports mail, and kept: retries send the very same bytes.
    sender_address = models.CharField(max_length=998, blank=True)
    raw_message = models.BinaryField(blank=True, default=b"")
    message_id = models.CharField(max_length=998, blank=True)
    is_automatic = models.BooleanField(default=True)
    log_message = models.ForeignKey(
        "records.Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="outbox",
        help_text="The message-log entry this email delivers.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    smtp_response = models.TextField(blank=True)
    last_error = models.TextField(blank=True)
    # A delivery status notification (RFC 3464) naming this email came back: when, and the
    # remote server's reason (its Diagnostic-Code, or Status and Action).
    bounced_at = models.DateTimeField(null=True, blank=True)
    bounce_reason = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="outbox_due"),
            models.Index(fields=["recipient", "created_at"], name="outbox_recipient_created"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {', '.join(self.to_addresses)} ({self.state})"


class NotificationSettings(models.Model):
    """Which notifications go out (one row; admins switch them in the admin site)."""

    class AdminRecipients(models.TextChoices):
        ASSIGNED = "assigned", "The assigned admin (else the group, else all admins)"
        GROUP = "group", "All admins of the record's group (else all admins)"
        ALL = "all", "All admins"

    end_user_on_created = models.BooleanField(default=True)
    end_user_on_updated = models.BooleanField(default=False)
    end_user_on_details_changed = models.BooleanField(default=True)
    admins_on_created = models.BooleanField(default=True)
    admins_on_updated = models.BooleanField(default=True)
    admins_on_details_changed = models.BooleanField(default=True)
    admins_on_escalated = models.BooleanField(default=True)
    admin_recipients = models.CharField(
        max_length=10, choices=AdminRecipients.choices, default=AdminRecipients.ASSIGNED
    )

    class Meta:
        verbose_name_plural = "notification settings"

    def __str__(self) -> str:
        return "Notification settings"

    @classmethod
    def current(cls) -> NotificationSettings:
        settings, _created = cls.objects.get_or_create(pk=1)
        return settings


class MailboxState(models.Model):
    """What the mail engine last saw of one integration: polls, failures and their back-off,
    the admins' alert, the IMAP IDLE listener. Runtime state, not configuration: the
    integration's form never writes it, export never carries it.

    One per integration, created on its first write (mailworker/status.py); an integration
    without one has never been polled.
    """

    integration = models.OneToOneField(
        "integrations.EmailIntegration", on_delete=models.CASCADE, related_name="mailbox_state"
    )
    last_polled_at = models.DateTimeField(null=True, blank=True)
    # When a routine pass was queued and has not ended yet: dispatch does not queue another
    # (mailworker/scheduling.py). Cleared when a pass ends.
    pass_queued_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(
        default=0, help_text="Failed passes or sends in a row; 0 after a success."
    )
    poll_failures = models.PositiveIntegerField(
        default=0, help_text="Failed passes in a row; polling backs off while it grows."
    )
    failure_alert_sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When admins were alerted about the current failures."
    )
    idle_status = models.CharField(
        max_length=255, blank=True, help_text="What the IMAP IDLE listener last saw."
    )
    idle_status_at = models.DateTimeField(null=True, blank=True)
    subject_regex_timed_out_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the ignore-subject pattern last took too long (counted as no match).",
    )

    def __str__(self) -> str:
        return f"State of integration {self.integration_id}"


class GraphFolderState(models.Model):
    """Where the last complete delta round over a Graph folder ended: the next pass asks
    Graph only for what changed since. Written only once every message of the round was
    committed and acked, so a pass that fails midway starts the round again."""

    integration = models.ForeignKey(
        "integrations.EmailIntegration", on_delete=models.CASCADE, related_name="+"
    )
    folder_id = models.CharField(max_length=512)
    delta_link = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["integration", "folder_id"], name="one_graph_state_per_folder"
            )
        ]

    def __str__(self) -> str:
        return f"delta state of {self.folder_id[:16]}… ({self.integration_id})"


class GraphSubscription(models.Model):
    """A Graph change-notification subscription for an integration's folder (push).

    Graph sends `clientState` back in clear with every notification; only its SHA-256 is
    kept, and a notification is believed when the hash of what it carries matches."""

    integration = models.OneToOneField(
        "integrations.EmailIntegration", on_delete=models.CASCADE, related_name="+"
    )
    subscription_id = models.CharField(max_length=255, unique=True)
    resource = models.CharField(max_length=1000)
    notification_url = models.CharField(max_length=1000)
    client_state_sha256 = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    renewed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Graph subscription {self.subscription_id} until {self.expires_at:%Y-%m-%d %H:%M}"


class NotificationTemplate(models.Model):
    """An admin's own text for one of the desk's emails (Settings > Notifications), in place
    of the template file templates/emails/<key>.txt and <key>.subject.txt. "Reset to the
    default" deletes the row: the file's text is the default, never copied here."""

    key = models.CharField(max_length=60, unique=True, help_text="e.g. record_created_end_user")
    subject = models.CharField(max_length=998)
    body = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"Edited email text {self.key}"


class UnalertedFlood(models.Model):
    """A flood held in the quarantine whose alert reached nobody (no admin had an email
    address). Its emails count as not alerted yet: the next pass that holds one of them
    sends the alert again, and the row goes once an alert went out."""

    flood_key = models.CharField(max_length=400, unique=True)
    first_held_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Flood {self.flood_key} not alerted"
