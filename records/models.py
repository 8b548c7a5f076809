"""Service records and their message log, the people around them, and what the mail engine
keeps about each email it has seen (the processed marker and the quarantine)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from integrations.validation import validate_subject_regex
from servicedesk.control_characters import refuse_control_characters


class User(AbstractUser):
    """Admins and agents are staff; end users are users without staff rights.

    An unregistered sender becomes an end user with an unusable password. The email address is
    how the mail engine finds a person, so it is unique regardless of case (when set).
    """

    # Names go into the headers of the desk's emails ("Jane Doe" <jane@...>) and onto every
    # screen: no line breaks or other control characters (forms and full_clean refuse them;
    # names read from emails are cleaned by the service that creates the end user).
    first_name = models.CharField(
        "first name", max_length=150, blank=True, validators=[refuse_control_characters]
    )
    last_name = models.CharField(
        "last name", max_length=150, blank=True, validators=[refuse_control_characters]
    )
    # Set when an email of the desk to this address bounced (a DSN naming it): agents see
    # that the person may not be hearing from the desk.
    email_bounced_at = models.DateTimeField(null=True, blank=True)
    email_bounce_reason = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                condition=~models.Q(email=""),
                name="user_email_unique_ci",
                violation_error_message="Another user already has this email address.",
            )
        ]

    @property
    def is_end_user(self) -> bool:
        return not self.is_staff

    def __str__(self) -> str:
        full_name = self.get_full_name()
        return f"{full_name} <{self.email}>" if full_name and self.email else self.username


class Status(models.Model):
    name = models.CharField(max_length=60, unique=True)
    order = models.PositiveIntegerField(default=0)
    is_closed = models.BooleanField(default=False, help_text="Records in this status are done.")

    class Meta:
        ordering = ["order", "name"]
        verbose_name_plural = "statuses"

    def __str__(self) -> str:
        return self.name


class AdminGroup(models.Model):
    """A team of admins that records are routed to (SysAid's admin group)."""

    name = models.CharField(max_length=100, unique=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="admin_groups"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Category(models.Model):
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Priority(models.IntegerChoices):
    HIGHEST = 1, "Highest"
    VERY_HIGH = 2, "Very high"
    HIGH = 3, "High"
    NORMAL = 4, "Normal"
    LOW = 5, "Low"


class ServiceRecord(models.Model):
    """A ticket. Its primary key is its number, shown as "#123" in subjects and screens."""

    title = models.CharField(max_length=500)
    description = models.TextField(blank=True)
    status = models.ForeignKey(Status, on_delete=models.PROTECT, related_name="records")
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="requested_records"
    )
    assigned_admin = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_records",
    )
    group = models.ForeignKey(
        AdminGroup, null=True, blank=True, on_delete=models.SET_NULL, related_name="records"
    )
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="records"
    )
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    source_integration = models.ForeignKey(
        "integrations.EmailIntegration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="records",
        help_text="The integration the record came in through, if it came by email.",
    )
    due_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(
        null=True, blank=True, help_text="When admins were told the due date had passed."
    )
    # Set when an agent merged this record into another: its message log moved there, it
    # is closed, and an email naming its number threads into the kept record.
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_records"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "-updated_at"], name="record_status_updated"),
            models.Index(fields=["assigned_admin", "status"], name="record_assignee_status"),
            models.Index(fields=["requester", "-created_at"], name="record_requester_created"),
            models.Index(fields=["-updated_at"], name="record_updated"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    @property
    def number(self) -> int:
        return self.pk

    @property
    def display_number(self) -> str:
        return f"#{self.pk}"

    @property
    def is_overdue(self) -> bool:
        """Open and past its due date (the status is read: select it with the record)."""
        return (
            self.due_at is not None and self.due_at < timezone.now() and not self.status.is_closed
        )


class Direction(models.TextChoices):
    INCOMING = "in", "Incoming"
    OUTGOING = "out", "Outgoing"


class Message(models.Model):
    """One entry of a record's message log: an email received or sent, or an agent's note."""

    record = models.ForeignKey(ServiceRecord, on_delete=models.CASCADE, related_name="messages")
    direction = models.CharField(max_length=3, choices=Direction.choices)
    integration = models.ForeignKey(
        "integrations.EmailIntegration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="authored_messages",
    )
    from_address = models.CharField(max_length=998, blank=True)
    to_addresses = models.JSONField(default=list, blank=True)
    cc_addresses = models.JSONField(default=list, blank=True)
    # An agent's reply only: the hidden recipients, shown to staff in the log, never sent in
    # a header, and not participants of the record (is_on_record reads To and Cc only).
    bcc_addresses = models.JSONField(default=list, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True, help_text="Sanitised HTML, safe to show.")
    message_id = models.CharField(max_length=998, blank=True)
    in_reply_to = models.CharField(max_length=998, blank=True)
    references = models.TextField(blank=True)
    date = models.DateTimeField(null=True, blank=True, help_text="The email's Date header.")
    raw_size = models.PositiveIntegerField(default=0)
    # An internal note is seen by staff only: never emailed, never a status change.
    is_internal = models.BooleanField(default=False)
    # Incoming: the email as it arrived (while the retention period keeps it), and what the
    # parser noted or a limit cut ("3 attachments not shown: see the original").
    original = models.ForeignKey(
        "records.Original", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    defects = models.JSONField(default=list, blank=True)
    # Incoming: what the trusted receiving server said about the sender (None: nothing
    # trusted said anything; False: DMARC failed, shown as "sender not verified").
    sender_verified = models.BooleanField(null=True, blank=True)
    authentication = models.CharField(
        max_length=500, blank=True, help_text="The trusted Authentication-Results, summarised."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["record", "created_at"], name="message_record_created"),
            # Threading: a reply's In-Reply-To and References are looked up here.
            models.Index(fields=["message_id"], name="message_message_id"),
        ]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.subject!r} on #{self.record_id}"


def attachment_path(instance: Attachment, filename: str) -> str:
    """A folder per record, the message's number before the file's name: a folder per
    message cost a directory creation per email with files (half a millisecond on ext4),
    as much as writing the file. Read from the message itself: one written with its
    chunk's rows (records.write_behind) got its key after the attachment was made."""
    message = instance.message
    return f"attachments/{message.record_id}/{message.pk}-{filename}"


class Attachment(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to=attachment_path, max_length=500)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    size = models.PositiveBigIntegerField(default=0)
    content_id = models.CharField(
        max_length=255, blank=True, help_text="Set for inline images referenced as cid: in HTML."
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.filename


class EmailRule(models.Model):
    """Routes and assigns new records by what their first email says; applied in order."""

    class Match(models.TextChoices):
        ALL = "all", "All conditions"
        ANY = "any", "Any condition"

    name = models.CharField(max_length=200, unique=True)
    order = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    match = models.CharField(max_length=3, choices=Match.choices, default=Match.ALL)
    # Which incoming integrations' emails the rule sees: every one (also those added later),
    # or only the chosen ones.
    all_integrations = models.BooleanField(
        default=True, help_text="Applies to every incoming integration, also those added later."
    )
    integrations = models.ManyToManyField(
        "integrations.EmailIntegration", blank=True, related_name="email_rules"
    )
    set_group = models.ForeignKey(AdminGroup, null=True, blank=True, on_delete=models.SET_NULL)
    set_category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL)
    set_priority = models.PositiveSmallIntegerField(choices=Priority.choices, null=True, blank=True)
    set_status = models.ForeignKey(
        Status, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    assign_admin = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        limit_choices_to={"is_staff": True},
        related_name="+",
    )
    stop_processing = models.BooleanField(
        default=False, help_text="When this rule matches, later rules are not applied."
    )

    class Meta:
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return self.name


class EmailRuleCondition(models.Model):
    class Field(models.TextChoices):
        SENDER = "sender", "Sender address"
        SENDER_DOMAIN = "sender_domain", "Sender domain"
        RECIPIENT = "recipient", "Recipient address"
        SUBJECT = "subject", "Subject"
        BODY = "body", "Body"

    class Operator(models.TextChoices):
        CONTAINS = "contains", "contains"
        EQUALS = "equals", "equals"
        STARTS_WITH = "starts_with", "starts with"
        ENDS_WITH = "ends_with", "ends with"
        REGEX = "regex", "matches regex"

    rule = models.ForeignKey(EmailRule, on_delete=models.CASCADE, related_name="conditions")
    field = models.CharField(max_length=16, choices=Field.choices)
    operator = models.CharField(max_length=12, choices=Operator.choices, default=Operator.CONTAINS)
    value = models.CharField(max_length=500)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.get_field_display()} {self.get_operator_display()} {self.value!r}"

    def clean(self) -> None:
        """A pattern must compile as the mail engine compiles it (the `regex` package, with
        SysAid's Java-style inline flags), so a rule never fails silently on every email.
        A domain is compared without its "@", however the admin wrote it."""
        if self.operator == self.Operator.REGEX:
            try:
                validate_subject_regex(self.value)
            except ValidationError as exc:
                raise ValidationError({"value": exc}) from exc
        elif self.field == self.Field.SENDER_DOMAIN:
            self.value = self.value.strip().lstrip("@")


class Quarantine(models.Model):
    """An email that could not be processed, kept whole so nothing is lost."""

    integration = models.ForeignKey(
        "integrations.EmailIntegration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="quarantined",
    )
    raw_email = models.BinaryField()
    reason = models.TextField()
    from_address = models.CharField(max_length=998, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    message_id = models.CharField(max_length=998, blank=True)
    # Set on emails held by the flood limit ("sender:a@b.test" or "domain:b.test"), so the
    # quarantine screen can release one flood at once.
    flood_key = models.CharField(max_length=400, blank=True)
    # The whole email as it arrived (raw_email may then hold only what fits in the database).
    original = models.ForeignKey(
        "records.Original", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name_plural = "quarantine"
        indexes = [
            models.Index(fields=["-received_at"], name="quarantine_received"),
            models.Index(fields=["flood_key", "received_at"], name="quarantine_flood"),
        ]

    def __str__(self) -> str:
        return f"{self.subject!r} from {self.from_address}: {self.reason}"


def original_path(instance: Original, filename: str) -> str:
    return f"originals/{instance.received_at:%Y/%m/%d}/{filename}"


class Original(models.Model):
    """An incoming email exactly as it arrived, compressed, in the storage the desk uses for
    attachments (MEDIA_ROOT), kept for the retention period of DeskSettings: a Zstandard frame
    at `offset` of `file` (a pack holds a chunk's emails), or a whole gzip file (before
    packs). See records/originals.py."""

    integration = models.ForeignKey(
        "integrations.EmailIntegration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Indexed: retention deletes a pack when no row points into it any more.
    file = models.FileField(upload_to=original_path, max_length=500, db_index=True)
    offset = models.PositiveBigIntegerField(default=0, help_text="Where its frame starts.")
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes as the email arrived.")
    stored_size = models.PositiveBigIntegerField(default=0, help_text="Bytes in storage.")
    sha256 = models.CharField(max_length=64, db_index=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.size} bytes, {self.received_at:%Y-%m-%d})"


class DeskSettings(models.Model):
    """Settings of the desk as a whole that admins change in the screens (one row)."""

    originals_retention_days = models.PositiveIntegerField(
        "keep originals and the incoming email log for (days)",
        default=90,
        help_text="A daily task deletes older originals and incoming log entries.",
    )

    class Meta:
        verbose_name_plural = "desk settings"

    def __str__(self) -> str:
        return "Desk settings"

    @classmethod
    def current(cls) -> DeskSettings:
        settings, _created = cls.objects.get_or_create(pk=1)
        return settings


class ProcessedEmail(models.Model):
    """One row per email an integration fetched: the processed marker and the incoming email
    log in one (what became of the email, and why).

    `key` is the SHA-256 of the raw bytes (or of the server's stable id of the message, see
    mailworker.pipeline.process.marker_key), so a message fetched again after a crash between
    commit and ack is recognised and only acked.
    """

    class Outcome(models.TextChoices):
        CREATED = "created", "Created a record"
        APPENDED = "appended", "Added to a record's message log"
        NOTE = "note", "Added to a record as an internal note"
        IGNORED = "ignored", "Ignored"
        DUPLICATE = "duplicate", "Duplicate"
        LOOP = "loop", "Loop guard"
        BOUNCE = "bounce", "Bounce of an email of the desk"
        FLOOD = "flood", "Held by the flood limit"
        QUARANTINED = "quarantined", "Quarantined"

    integration = models.ForeignKey(
        "integrations.EmailIntegration", on_delete=models.CASCADE, related_name="processed"
    )
    key = models.CharField(max_length=64)
    message_id = models.CharField(max_length=998, blank=True)
    fingerprint = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of sender, subject and body (duplicates)."
    )
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    record = models.ForeignKey(
        ServiceRecord, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The incoming email log: who sent what, how large, why it ended as it did, and where to
    # look (the record above, the quarantine entry, the original, the email it duplicates).
    from_address = models.CharField(max_length=998, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    size = models.PositiveBigIntegerField(default=0)
    reason = models.TextField(blank=True)
    quarantine = models.ForeignKey(
        Quarantine, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    original = models.ForeignKey(
        Original, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "incoming email"
        verbose_name_plural = "incoming email log"
        constraints = [
            models.UniqueConstraint(fields=["integration", "key"], name="processed_email_unique")
        ]
        indexes = [
            models.Index(fields=["fingerprint", "-processed_at"], name="processed_fingerprint"),
            models.Index(fields=["-processed_at"], name="processed_at"),
            # The incoming email log's filters, newest first.
            models.Index(fields=["integration", "-processed_at"], name="processed_integration"),
            models.Index(fields=["outcome", "-processed_at"], name="processed_outcome"),
        ]

    def __str__(self) -> str:
        return f"{self.key[:12]} ({self.outcome})"
