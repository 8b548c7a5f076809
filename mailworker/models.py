"""What the mail engine keeps about itself."""

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
        FORWARD_IGNORED = "forward_ignored", "Ignored email forwarded"
        COPY_INCOMING = "copy_incoming", "Copy of an incoming email"
        SIZE_NOTICE = "size_notice", "Notice: email too large"
        NOTIFICATION = "notification", "Notification"
        REPLY = "reply", "Reply by an agent"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

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
    record = models.ForeignKey(
        "records.ServiceRecord", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    to_addresses = models.JSONField(default=list)
    subject = models.CharField(max_length=998, blank=True)
    text_body = models.TextField(blank=True)
    attached_email = models.BinaryField(
        blank=True, default=b"", help_text="The raw email forwarded or copied, sent as .eml."
    )
    in_reply_to = models.CharField(max_length=998, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"], name="outbox_state_created")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {', '.join(self.to_addresses)} ({self.state})"
