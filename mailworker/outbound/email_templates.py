"""The desk's emails that admins may reword (Settings > Notifications): what each is for,
the variables its text can use, and the plain values those variables hold.

The values are built here from the models, as strings, numbers, lists and dicts only
(see outbound/texts.py for why): a variable not listed below does not exist in a text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import formats, timezone

from records.models import Message, ServiceRecord

RECORD_VARIABLES: tuple[tuple[str, str], ...] = (
    ("record.number", "the record's number (e.g. 123; the subject gets “#123” added)"),
    ("record.title", "its title (the subject of the email that opened it)"),
    ("record.description", "its description (the first email's text)"),
    ("record.status", "its status, e.g. “Open”"),
    ("record.priority", "its priority, e.g. “Normal”"),
    ("record.category", "its category, or nothing"),
    ("record.group", "its admin group, or nothing"),
    ("record.assigned_admin", "the assigned admin's name, or nothing"),
    ("record.due_at", "its due date, or nothing"),
    ("record.requester.email", "the end user's email address"),
    ("record.requester.name", "the end user's name (else their address)"),
)
MESSAGE_VARIABLES: tuple[tuple[str, str], ...] = (
    ("message.from_address", "who wrote the new message"),
    ("message.subject", "its subject"),
    ("message.text_body", "its text"),
)
CHANGE_VARIABLES: tuple[tuple[str, str], ...] = (
    ("changes", "the changes: {% for label, old, new in changes %}…{% endfor %}"),
)
INTEGRATION_VARIABLES: tuple[tuple[str, str], ...] = (
    ("integration.name", "the email integration's name (Settings > Email)"),
)


@dataclass(frozen=True)
class EmailTemplate:
    key: str
    label: str
    audience: str
    variables: tuple[tuple[str, str], ...]
    about_record: bool = True


EMAIL_TEMPLATES: tuple[EmailTemplate, ...] = (
    EmailTemplate(
        "record_created_end_user",
        "Record opened: acknowledgement",
        "End user",
        RECORD_VARIABLES,
    ),
    EmailTemplate(
        "record_created_admin", "Record opened", "Admins", RECORD_VARIABLES + MESSAGE_VARIABLES
    ),
    EmailTemplate(
        "record_updated_end_user",
        "New message on a record",
        "End user",
        RECORD_VARIABLES + MESSAGE_VARIABLES,
    ),
    EmailTemplate(
        "record_updated_admin",
        "New message on a record",
        "Admins",
        RECORD_VARIABLES + MESSAGE_VARIABLES,
    ),
    EmailTemplate(
        "details_changed_end_user",
        "Status changed",
        "End user",
        RECORD_VARIABLES + CHANGE_VARIABLES,
    ),
    EmailTemplate(
        "details_changed_admin",
        "Details changed (status, assignee, priority …)",
        "Admins",
        RECORD_VARIABLES
        + CHANGE_VARIABLES
        + (("actor", "who changed it (a username), or nothing"),),
    ),
    EmailTemplate(
        "record_escalated",
        "Escalated (due date passed, or “Escalate now”)",
        "Admins",
        RECORD_VARIABLES + (("actor", "who pressed “Escalate now” (a name), or nothing"),),
    ),
    EmailTemplate(
        "integration_failing",
        "An email integration keeps failing",
        "Admins (system alert)",
        INTEGRATION_VARIABLES
        + (
            ("direction", "“fetch email” or “send email”"),
            ("consecutive_failures", "failures in a row"),
            ("error", "the last error"),
        ),
        about_record=False,
    ),
    EmailTemplate(
        "integration_needs_reconnect",
        "An email integration must be connected again",
        "Admins (system alert)",
        INTEGRATION_VARIABLES
        + (
            ("provider", "e.g. “Microsoft 365” or “Google”"),
            ("account", "the mailbox account that was signed in"),
            ("reason", "what the provider answered"),
        ),
        about_record=False,
    ),
    EmailTemplate(
        "flood_held",
        "A flood of new emails is held in the quarantine",
        "Staff who may view the quarantine (system alert)",
        INTEGRATION_VARIABLES
        + (
            ("source", "the sender or domain that flooded"),
            ("reason", "the first held email's reason"),
        ),
        about_record=False,
    ),
)
TEMPLATES_BY_KEY = {template.key: template for template in EMAIL_TEMPLATES}


# Plain values from the models -----------------------------------------------------------


def when(value: datetime | None) -> str:
    """A date as the desk's templates always showed it (local time, Django's format)."""
    return "" if value is None else str(formats.localize(timezone.template_localtime(value)))


def person(user: Any) -> str:
    if user is None:
        return ""
    return user.get_full_name() or user.email or user.get_username()


def record_values(record: ServiceRecord) -> dict[str, Any]:
    """The record as a text sees it. The related rows are read only when set (an email
    opened record has none of them)."""
    requester = record.requester
    return {
        "number": record.pk,
        "title": record.title,
        "description": record.description,
        "status": str(record.status),
        "priority": record.get_priority_display(),
        "category": str(record.category) if record.category_id else "",
        "group": str(record.group) if record.group_id else "",
        "assigned_admin": person(record.assigned_admin) if record.assigned_admin_id else "",
        "due_at": when(record.due_at),
        "requester": {
            "email": requester.email,
            "name": requester.get_full_name() or requester.email,
        },
    }


def message_values(message: Message | None) -> dict[str, str]:
    if message is None:
        return {"from_address": "", "subject": "", "text_body": ""}
    return {
        "from_address": message.from_address,
        "subject": message.subject,
        "text_body": message.text_body,
    }


def change_values(lines: list[tuple[str, str, str]]) -> list[list[str]]:
    return [[str(label), str(old), str(new)] for label, old, new in lines]


# What the preview shows -------------------------------------------------------------------

SAMPLE_RECORD = {
    "number": 123,
    "title": "Printer on floor 3 jams",
    "description": "Hello,\n\nthe printer on floor 3 jams on every second page.\n\nJane",
    "status": "Open",
    "priority": "Normal",
    "category": "Hardware",
    "group": "First line",
    "assigned_admin": "Alex Admin",
    "due_at": "Dec. 2, 2026, 9 a.m.",
    "requester": {"email": "jane@customer.example", "name": "Jane Doe"},
}
SAMPLE_VALUES: dict[str, Any] = {
    "record": SAMPLE_RECORD,
    "message": {
        "from_address": "jane@customer.example",
        "subject": "Re: [#123] Printer on floor 3 jams",
        "text_body": "It jams again, now on every page.",
    },
    "changes": [["Status", "New", "Open"], ["Assigned admin", "", "Alex Admin"]],
    "actor": "alex",
    "integration": {"name": "Support mailbox"},
    "direction": "fetch email",
    "consecutive_failures": 5,
    "error": "Login failed: AUTHENTICATIONFAILED",
    "provider": "Microsoft 365",
    "account": "support@example.com",
    "reason": "invalid_grant: the sign-in was revoked",
    "source": "noreply@flood.example",
}


def sample_values(key: str) -> dict[str, Any]:
    """Made-up values for every variable of `key`'s text (the screen's preview)."""
    names = {name.split(".", 1)[0] for name, _ in TEMPLATES_BY_KEY[key].variables}
    return {name: value for name, value in SAMPLE_VALUES.items() if name in names}
