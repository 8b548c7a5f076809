"""Rules an integration's settings must follow, each with a message that says what to fix.

Shared by the Settings > Email form and `manage.py integration import`, through the model's
`clean()` and the services.
"""

from __future__ import annotations

import regex
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, validate_email

MAX_IGNORED_SENDERS = 20
# Microsoft turned off basic authentication (password logins) for Exchange Online on
# March 1, 2026: a password-based protocol against these hosts can only fail.
MICROSOFT_BASIC_AUTH_DOMAINS = ("office365.com", "outlook.com", "exchange.microsoft.com")

_domain_validator = EmailValidator()


def normalise_sender_entry(entry: str) -> str:
    """An address (`jane@example.com`) or a domain (`example.com`, `@example.com`), lowercased."""
    return entry.strip().lower()


def is_valid_sender_entry(entry: str) -> bool:
    entry = normalise_sender_entry(entry)
    if not entry:
        return False
    if "@" in entry and not entry.startswith("@"):
        try:
            validate_email(entry)
        except ValidationError:
            return False
        return True
    domain = entry.lstrip("@")
    return "." in domain and _domain_validator.validate_domain_part(domain)


def validate_sender_list(entries: list[str], *, limit: int | None = None) -> list[str]:
    """Clean a list of addresses and domains; raise with every bad entry named."""
    cleaned = []
    for entry in entries:
        normalised = normalise_sender_entry(entry)
        if normalised and normalised not in cleaned:
            cleaned.append(normalised)
    invalid = [entry for entry in cleaned if not is_valid_sender_entry(entry)]
    if invalid:
        raise ValidationError(
            "Not an email address or a domain: %(entries)s. Write one per line, e.g. "
            "jane@example.com or example.com.",
            code="invalid_sender",
            params={"entries": ", ".join(invalid)},
        )
    if limit is not None and len(cleaned) > limit:
        raise ValidationError(
            "At most %(limit)d entries are allowed; there are %(count)d. Remove some, or "
            "ignore a whole domain instead of single addresses.",
            code="too_many",
            params={"limit": limit, "count": len(cleaned)},
        )
    return cleaned


def validate_subject_regex(pattern: str) -> None:
    """The pattern must compile under the `regex` package (Java-style inline flags allowed)."""
    if not pattern:
        return
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise ValidationError(
            "This regular expression does not compile: %(error)s. Check brackets and escapes; "
            "inline flags such as (?iu) are allowed.",
            code="invalid_regex",
            params={"error": exc},
        ) from exc


def is_microsoft_basic_auth_host(server: str) -> bool:
    host = server.strip().lower().rstrip(".")
    return any(
        host == domain or host.endswith("." + domain) for domain in MICROSOFT_BASIC_AUTH_DOMAINS
    )


MICROSOFT_BASIC_AUTH_MESSAGE = (
    "Microsoft ended basic authentication (password logins) for %(server)s on March 1, 2026. "
    "Choose the protocol “Microsoft 365 (OAuth 2.0)” instead."
)


def _entry_domain(entry: str) -> str:
    """The domain an entry names (`example.com`, `@example.com`) or an address is of."""
    return entry.rpartition("@")[2] if "@" in entry else entry


def _covers(broad: str, narrow: str) -> bool:
    """Whether every sender `narrow` matches is matched by `broad` too: a domain covers its
    addresses and its subdomains, as the mail engine's filters match them."""
    broad, narrow = normalise_sender_entry(broad), normalise_sender_entry(narrow)
    if "@" in broad and not broad.startswith("@"):
        return broad == narrow
    domain = broad.lstrip("@")
    narrow_domain = _entry_domain(narrow.lstrip("@"))
    return narrow_domain == domain or narrow_domain.endswith("." + domain)


def sender_list_overlaps(*, accepted: list[str], ignored: list[str]) -> list[str]:
    """Where "Accept only emails from" and "Ignore emails from" name the same senders, in
    words for the admin. The ignore list is checked after the whitelist, so an overlap is
    ignored whatever the whitelist says: allowed, but rarely what was meant."""
    overlaps = []
    for accept in accepted:
        for ignore in ignored:
            if _covers(accept, ignore) and _covers(ignore, accept):
                overlaps.append(f"{_shown(accept)} is on both lists: its emails are ignored.")
            elif _covers(ignore, accept):
                overlaps.append(
                    f"{_shown(accept)} is accepted, but the ignored {_shown(ignore)} covers it: "
                    "its emails are ignored."
                )
            elif _covers(accept, ignore):
                overlaps.append(
                    f"The accepted {_shown(accept)} covers the ignored {_shown(ignore)}: emails "
                    f"from {_shown(ignore)} are still ignored."
                )
    return overlaps


def _shown(entry: str) -> str:
    return f"“{normalise_sender_entry(entry).lstrip('@')}”"
