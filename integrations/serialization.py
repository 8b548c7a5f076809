"""Email integrations as JSON: what `manage.py integration export` writes and `import` reads.

One table, FIELDS, says where each model field sits in the JSON and what it holds; export and
import both read it, so the two cannot drift apart. Import goes through
`integrations.services.save_integration`, so a file follows the same rules as the form.
"""

from __future__ import annotations

import difflib
import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet

from integrations.models import EmailIntegration
from integrations.services import Secrets, save_integration
from records.models import Status

User = get_user_model()


class Kind(enum.Enum):
    TEXT = enum.auto()
    BOOL = enum.auto()
    INT = enum.auto()
    OPTIONAL_INT = enum.auto()  # null: the usual port
    TEXT_LIST = enum.auto()
    SECRET = enum.auto()  # left out of an export unless asked for
    STATUS = enum.auto()  # a Status, by name
    STATUSES = enum.auto()
    USERS = enum.auto()  # users, by username or email address


EXPECTED = {
    Kind.TEXT: "a string",
    Kind.BOOL: "true or false",
    Kind.INT: "a whole number",
    Kind.OPTIONAL_INT: "a whole number or null",
    Kind.TEXT_LIST: "a list of strings",
    Kind.SECRET: "a string",
    Kind.STATUS: "a status name or null",
    Kind.STATUSES: "a list of status names",
    Kind.USERS: "a list of usernames or email addresses",
}
LIST_KINDS = (Kind.TEXT_LIST, Kind.STATUSES, Kind.USERS)


@dataclass(frozen=True)
class JsonField:
    path: str  # "name", or "section.key"
    model_field: str
    kind: Kind

    @property
    def section(self) -> str | None:
        return self.path.split(".")[0] if "." in self.path else None

    @property
    def key(self) -> str:
        return self.path.rsplit(".", 1)[-1]


# In the order export writes them.
FIELDS: tuple[JsonField, ...] = (
    JsonField("name", "name", Kind.TEXT),
    JsonField("description", "description", Kind.TEXT),
    JsonField("is_default", "is_default", Kind.BOOL),
    JsonField("incoming.enabled", "incoming_enabled", Kind.BOOL),
    JsonField("incoming.protocol", "incoming_protocol", Kind.TEXT),
    JsonField("incoming.mailbox_access", "oauth_mailbox_access", Kind.TEXT),
    JsonField("incoming.server", "incoming_server", Kind.TEXT),
    JsonField("incoming.port", "incoming_port", Kind.OPTIONAL_INT),
    JsonField("incoming.encryption", "incoming_encryption", Kind.TEXT),
    JsonField("incoming.username", "incoming_username", Kind.TEXT),
    JsonField("incoming.password", "incoming_password", Kind.SECRET),
    JsonField("incoming.folder", "incoming_folder", Kind.TEXT),
    JsonField("incoming.graph_processed_folder", "graph_processed_folder", Kind.TEXT),
    JsonField("incoming.poll_interval_seconds", "poll_interval_seconds", Kind.INT),
    JsonField("incoming.use_idle", "use_idle", Kind.BOOL),
    JsonField("incoming.use_last_record_number", "use_last_record_number", Kind.BOOL),
    JsonField("incoming.search_body_for_record_number", "search_body_for_record_number", Kind.BOOL),
    JsonField("incoming.change_status_to", "change_status_to", Kind.STATUS),
    JsonField("incoming.unless_status_in", "unless_status_in", Kind.STATUSES),
    JsonField("incoming.ignore_senders", "ignore_senders", Kind.TEXT_LIST),
    JsonField("incoming.ignore_subject_regex", "ignore_subject_regex", Kind.TEXT),
    JsonField("incoming.whitelist_senders", "whitelist_senders", Kind.TEXT_LIST),
    JsonField("incoming.duplicate_exempt_senders", "duplicate_exempt_senders", Kind.TEXT_LIST),
    JsonField("incoming.forward_ignored_to", "forward_ignored_to", Kind.USERS),
    JsonField("incoming.copy_incoming_to", "copy_incoming_to", Kind.TEXT),
    JsonField("incoming.remove_emojis", "remove_emojis", Kind.BOOL),
    JsonField("incoming.bulk_mail_policy", "bulk_mail_policy", Kind.TEXT),
    JsonField("incoming.stranger_policy", "stranger_policy", Kind.TEXT),
    JsonField("incoming.trusted_authserv_ids", "trusted_authserv_ids", Kind.TEXT_LIST),
    JsonField("incoming.dmarc_failure_policy", "dmarc_failure_policy", Kind.TEXT),
    JsonField("oauth.access", "oauth_access", Kind.TEXT),
    JsonField("oauth.tenant", "oauth_tenant", Kind.TEXT),
    JsonField("oauth.client_id", "oauth_client_id", Kind.TEXT),
    JsonField("oauth.client_secret", "oauth_client_secret", Kind.SECRET),
    JsonField("oauth.client_certificate", "oauth_client_certificate", Kind.SECRET),
    JsonField("oauth.service_account_key", "oauth_service_account_key", Kind.SECRET),
    JsonField("outgoing.enabled", "outgoing_enabled", Kind.BOOL),
    JsonField("outgoing.protocol", "outgoing_protocol", Kind.TEXT),
    JsonField("outgoing.email_address", "email_address", Kind.TEXT),
    JsonField("outgoing.server", "smtp_host", Kind.TEXT),
    JsonField("outgoing.port", "smtp_port", Kind.OPTIONAL_INT),
    JsonField("outgoing.encryption", "smtp_encryption", Kind.TEXT),
    JsonField("outgoing.username", "smtp_username", Kind.TEXT),
    JsonField("outgoing.password", "smtp_password", Kind.SECRET),
    JsonField("outgoing.encoding", "outgoing_encoding", Kind.TEXT),
    JsonField("outgoing.content_type", "outgoing_content_type", Kind.TEXT),
    JsonField("outgoing.charset", "outgoing_charset", Kind.TEXT),
    JsonField("tls.verify_certificates", "verify_certificates", Kind.BOOL),
    JsonField("tls.ca_certificate", "ca_certificate", Kind.TEXT),
)

# Model fields a file never carries: identity and timestamps. What the mail engine records
# (MailboxState) and the OAuth tokens (OAuthGrant, one connect flow on one desk) are models
# of their own and never exported.
NOT_EXPORTED = frozenset(
    {
        "id",
        "created_at",
        "updated_at",
    }
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.section for f in FIELDS if f.section))
_PATH_OF_MODEL_FIELD = {field.model_field: field.path for field in FIELDS}


# Export ---------------------------------------------------------------------------------


def integrations_for_export(*, name: str | None = None) -> QuerySet[EmailIntegration]:
    queryset = EmailIntegration.objects.select_related("change_status_to").prefetch_related(
        "unless_status_in", "forward_ignored_to"
    )
    if name is not None:
        queryset = queryset.filter(name=name)
    return queryset.order_by("name")


def _export_value(integration: EmailIntegration, field: JsonField) -> Any:
    if field.kind is Kind.STATUS:
        status = integration.change_status_to
        return status.name if status is not None else None
    if field.kind is Kind.STATUSES:
        return sorted(status.name for status in integration.unless_status_in.all())
    if field.kind is Kind.USERS:
        return sorted(user.username for user in integration.forward_ignored_to.all())
    if field.kind is Kind.TEXT_LIST:
        return list(getattr(integration, field.model_field) or [])
    return getattr(integration, field.model_field)


def integration_to_dict(integration: EmailIntegration, *, with_secrets: bool) -> dict[str, Any]:
    """The integration as the JSON object `import` reads back. Secrets only when asked for."""
    data: dict[str, Any] = {}
    for field in FIELDS:
        if field.kind is Kind.SECRET and not with_secrets:
            continue
        target = data.setdefault(field.section, {}) if field.section else data
        target[field.key] = _export_value(integration, field)
    return data


def export_integrations_json(*, name: str | None = None, with_secrets: bool) -> str:
    """Every integration (or the one named) as a JSON list, always a list."""
    data = [
        integration_to_dict(integration, with_secrets=with_secrets)
        for integration in integrations_for_export(name=name)
    ]
    return json.dumps(data, indent=2, ensure_ascii=False)


# Import: reading the file ---------------------------------------------------------------


class IntegrationFileError(Exception):
    """The file is wrong (the admin's to fix); nothing was imported. One line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_integrations_json(text: str) -> list[Any]:
    """The file's integrations: a JSON list of objects, or one object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrationFileError(
            [f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."]
        ) from exc
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    found = _json_type(data)
    raise IntegrationFileError(
        [f"The file must hold an integration (a JSON object) or a list of them, not {found}."]
    )


# Import: one object onto one integration ------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str  # the JSON path, "" for the integration as a whole
    message: str


class InvalidIntegrationData(Exception):
    """An object's keys, types, statuses or users are wrong: the admin's to fix."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in problems))


@dataclass(frozen=True)
class IntegrationChanges:
    """What `save_integration` needs; None for a related list means keep it as stored."""

    integration: EmailIntegration
    secrets: Secrets
    unless_status_in: list[Status] | None
    forward_ignored_to: list[Any] | None


def _json_type(value: Any) -> str:
    """The JSON type of a value, as a message says it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _unknown_key_message(key: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean “{close[0]}”?" if close else "the keys here are " + ", ".join(allowed)
    return f"Unknown key; {hint}"


def _check_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Flatten the object to {json path: value}, refusing unknown keys and non-object sections."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    top_level = [f.path for f in FIELDS if f.section is None] + list(SECTIONS)
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                problems.append(Problem(key, f"Must be an object, not {_json_type(value)}."))
                continue
            section_keys = [f.key for f in FIELDS if f.section == key]
            for sub_key, sub_value in value.items():
                if sub_key in section_keys:
                    values[f"{key}.{sub_key}"] = sub_value
                else:
                    problems.append(
                        Problem(f"{key}.{sub_key}", _unknown_key_message(sub_key, section_keys))
                    )
        elif key in top_level:
            values[key] = value
        else:
            problems.append(Problem(key, _unknown_key_message(key, top_level)))
    return values, problems


def _type_error(field: JsonField, value: Any) -> str | None:
    """Why the value does not have the field's JSON type; None when it does."""
    kind = field.kind
    wrong = f"Must be {EXPECTED[kind]}, not {_json_type(value)}."
    if kind is Kind.BOOL:
        return None if isinstance(value, bool) else wrong
    if kind in (Kind.INT, Kind.OPTIONAL_INT):
        if value is None and kind is Kind.OPTIONAL_INT:
            return None
        return None if isinstance(value, int) and not isinstance(value, bool) else wrong
    if kind is Kind.STATUS and value is None:
        return None
    if kind not in LIST_KINDS:
        if not isinstance(value, str):
            return wrong
        items = [value]
    elif not isinstance(value, list):
        return wrong
    else:
        items = value
    for item in items:
        if not isinstance(item, str):
            return f"Must be {EXPECTED[kind]}; the list holds {_json_type(item)}."
        # PostgreSQL cannot store NUL in text: refuse it here rather than fail at the database.
        if "\x00" in item:
            return "Must not contain NUL characters (\\u0000)."
    return None


def _find_statuses(names: list[str]) -> tuple[list[Status], list[str]]:
    found = {status.name: status for status in Status.objects.filter(name__in=names)}
    missing = [name for name in dict.fromkeys(names) if name not in found]
    return [found[name] for name in dict.fromkeys(names) if name in found], missing


def _status_problem(missing: list[str]) -> str:
    known = ", ".join(Status.objects.values_list("name", flat=True)) or "none"
    quoted = ", ".join(f"“{name}”" for name in missing)
    return f"No status named {quoted}. The statuses are: {known}."


def _find_users(entries: list[str]) -> tuple[list[Any], list[str]]:
    """Users by username, else by email address (any case); returns (users, problems)."""
    users: list[Any] = []
    problems: list[str] = []
    for entry in dict.fromkeys(entries):
        user = (
            User.objects.filter(username=entry).first()
            or User.objects.filter(Q(email__iexact=entry) & ~Q(email="")).first()
        )
        if user is None:
            problems.append(f"no user with the username or email address “{entry}”")
        elif not user.is_active:
            # The form offers active users only.
            problems.append(f"{user.username} is not an active user")
        elif user not in users:
            users.append(user)
    return users, problems


def apply_integration_dict(
    data: Mapping[str, Any], *, integration: EmailIntegration
) -> IntegrationChanges:
    """Put the object's values on the integration (new or stored) and gather what else
    `save_integration` needs. A key left out keeps the stored value, or the model's default
    on a new integration; so does a secret. Raises InvalidIntegrationData naming every
    unknown key, wrong type, unknown status and unknown user; the rules of the model and the
    services are `save_integration`'s to check."""
    values, problems = _check_keys(data)
    secrets: dict[str, str] = {}
    unless_status_in: list[Status] | None = None
    forward_ignored_to: list[Any] | None = None
    for field in FIELDS:
        if field.path not in values:
            continue
        value = values[field.path]
        type_error = _type_error(field, value)
        if type_error:
            problems.append(Problem(field.path, type_error))
            continue
        if field.kind is Kind.SECRET:
            secrets[field.model_field] = value
        elif field.kind is Kind.STATUS:
            status = None
            if value is not None:
                found, missing = _find_statuses([value])
                if missing:
                    problems.append(Problem(field.path, _status_problem(missing)))
                    continue
                status = found[0]
            integration.change_status_to = status
        elif field.kind is Kind.STATUSES:
            unless_status_in, missing = _find_statuses(value)
            if missing:
                problems.append(Problem(field.path, _status_problem(missing)))
        elif field.kind is Kind.USERS:
            forward_ignored_to, user_problems = _find_users(value)
            if user_problems:
                problems.append(Problem(field.path, "; ".join(user_problems).capitalize() + "."))
        elif field.kind is Kind.TEXT:
            # The form strips what is typed; a file gets the same treatment.
            setattr(integration, field.model_field, value.strip())
        else:
            setattr(integration, field.model_field, value)
    if problems:
        raise InvalidIntegrationData(problems)
    if forward_ignored_to is None and integration.pk is not None:
        # save_integration checks forwarding loops only against the users it is given: give
        # it the stored ones, so a changed username or address is checked against them too.
        forward_ignored_to = list(integration.forward_ignored_to.all())
    return IntegrationChanges(
        integration=integration,
        secrets=Secrets(**secrets),
        unless_status_in=unless_status_in,
        forward_ignored_to=forward_ignored_to,
    )


def validation_problems(exc: ValidationError) -> list[Problem]:
    """A ValidationError from the model or the services, with model fields as JSON paths."""
    if not hasattr(exc, "error_dict"):
        return [Problem("", message) for message in exc.messages]
    problems = []
    for model_field, messages in exc.message_dict.items():
        if model_field == NON_FIELD_ERRORS:
            path = ""
        else:
            path = _PATH_OF_MODEL_FIELD.get(model_field, model_field)
        problems.extend(Problem(path, message) for message in messages)
    return problems


# Import: the whole file -----------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    name: str
    created: bool


def _label(entry: Any, position: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    if isinstance(name, str) and name.strip():
        return name.strip()
    return f"integration {position} in the file"


def _line(label: str, problem: Problem) -> str:
    if problem.path:
        return f"{label}: {problem.path}: {problem.message}"
    return f"{label}: {problem.message}"


def _entry_problems(entries: list[Any]) -> list[str]:
    """What is wrong with the file as a whole: objects, names, names twice, two defaults."""
    lines: list[str] = []
    seen: set[str] = set()
    default: str | None = None
    for position, entry in enumerate(entries, start=1):
        label = _label(entry, position)
        if not isinstance(entry, dict):
            lines.append(f"{label}: Must be an object, not {_json_type(entry)}.")
            continue
        name = entry.get("name")
        if "name" not in entry:
            lines.append(f"{label}: name: Required; integrations are matched by name.")
        elif not isinstance(name, str) or not name.strip():
            lines.append(f"{label}: name: Must be a non-empty string, not {_json_type(name)}.")
        elif name.strip() in seen:
            lines.append(f"{label}: name: The file holds this integration twice.")
        else:
            seen.add(name.strip())
        if entry.get("is_default") is True:
            if default is not None:
                lines.append(
                    f"{label}: is_default: {default} is already the default in this file; "
                    "only one integration can be."
                )
            default = label
    return lines


@transaction.atomic
def import_integrations(*, entries: list[Any]) -> list[ImportResult]:
    """Create or update each integration by name, all or nothing.

    Every entry is checked even after one fails, so the admin sees the problems of every
    integration at once: for each, its keys, types, statuses and users first, and once those
    are right, the rules `save_integration` applies. Any problem raises IntegrationFileError
    and rolls the whole file back.
    """
    lines = _entry_problems(entries)
    if lines:
        raise IntegrationFileError(lines)
    results: list[ImportResult] = []
    for entry in entries:
        name = entry["name"].strip()
        stored = EmailIntegration.objects.select_for_update().filter(name=name).first()
        integration = stored or EmailIntegration(name=name)
        try:
            changes = apply_integration_dict(entry, integration=integration)
            save_integration(
                integration=changes.integration,
                secrets=changes.secrets,
                unless_status_in=changes.unless_status_in,
                forward_ignored_to=changes.forward_ignored_to,
            )
        except InvalidIntegrationData as exc:
            lines.extend(_line(name, problem) for problem in exc.problems)
        except ValidationError as exc:
            lines.extend(_line(name, problem) for problem in validation_problems(exc))
        else:
            results.append(ImportResult(name=name, created=stored is None))
    if lines:
        raise IntegrationFileError(lines)
    return results
