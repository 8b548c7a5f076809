"""Creating, changing and removing email integrations. The form and the JSON import both
come here, so both follow the same rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from integrations.editions import check_edition_limits
from integrations.models import EmailIntegration, IncomingProtocol
from integrations.oauth.services import forget_tokens_of_another_app
from records.models import Status

User = get_user_model()

UNCHANGED = None  # a secret argument of None keeps the stored value


@dataclass(frozen=True)
class Secrets:
    """New secret values; None keeps what is stored, "" clears it."""

    incoming_password: str | None = UNCHANGED
    smtp_password: str | None = UNCHANGED
    oauth_client_secret: str | None = UNCHANGED
    oauth_client_certificate: str | None = UNCHANGED
    oauth_service_account_key: str | None = UNCHANGED


SECRET_FIELDS = (
    "incoming_password",
    "smtp_password",
    "oauth_client_secret",
    "oauth_client_certificate",
    "oauth_service_account_key",
)


# The authserv-id Exchange Online stands for: it writes its Authentication-Results with none
# (mailworker/authentication.py reads a header without one as Exchange Online's when this
# id is trusted); mx.microsoft.com is the one it writes in its ARC-Authentication-Results.
EXCHANGE_ONLINE_AUTHSERV_ID = "mx.microsoft.com"

# What the hosted mailboxes' receiving servers write: an integration of that protocol that
# leaves the list empty trusts them (the mailbox is theirs, so every email came through them).
PROVIDER_AUTHSERV_IDS: dict[str, tuple[str, ...]] = {
    IncomingProtocol.MICROSOFT365: (EXCHANGE_ONLINE_AUTHSERV_ID,),
    IncomingProtocol.GOOGLE: ("mx.google.com",),
}


def prefill_trusted_authserv_ids(integration: EmailIntegration) -> None:
    """Trust the provider's receiving server when the admin chose Microsoft 365 or Google
    and named no server; a list the admin typed is kept as it is."""
    if not integration.trusted_authserv_ids:
        integration.trusted_authserv_ids = list(
            PROVIDER_AUTHSERV_IDS.get(integration.incoming_protocol, ())
        )


def _apply_secrets(integration: EmailIntegration, secrets: Secrets) -> None:
    for field in SECRET_FIELDS:
        value = getattr(secrets, field)
        if value is not UNCHANGED:
            setattr(integration, field, value)


def addresses_read_by_incoming_integrations(*, exclude_pk: int | None = None) -> set[str]:
    """Every address the desk reads mail for: mail sent there comes back to the desk."""
    return set(_integrations_reading_addresses(exclude_pk=exclude_pk))


def _integrations_reading_addresses(*, exclude_pk: int | None = None) -> dict[str, str]:
    """Each address the desk reads mail for, with the name of an integration reading it."""
    readers: dict[str, str] = {}
    queryset = EmailIntegration.objects.filter(incoming_enabled=True).order_by("name")
    if exclude_pk is not None:
        queryset = queryset.exclude(pk=exclude_pk)
    # Plain values, no model instances: every pass reads this, and with a thousand
    # mailboxes there are a thousand rows (a deferred field read per row, as `only()` gave
    # when incoming_enabled was left out, cost a query each).
    rows = queryset.values_list("name", "incoming_username", "email_address")
    for name, incoming_username, email_address in rows:
        for address in _addresses(incoming_username, email_address):
            readers.setdefault(address, name)
    return readers


def _addresses(*values: str) -> set[str]:
    return {address.strip().lower() for address in values if "@" in address}


def _own_addresses(integration: EmailIntegration) -> set[str]:
    if not integration.incoming_enabled:
        return set()
    return _addresses(integration.incoming_username, integration.email_address)


def _desk_address_readers(integration: EmailIntegration) -> dict[str, str]:
    """The desk's own addresses as they will be once `integration` is saved: its new values
    count, its stored ones do not."""
    readers = _integrations_reading_addresses(exclude_pk=integration.pk)
    for address in _own_addresses(integration):
        readers[address] = integration.name
    return readers


def _desk_address_problem(address: str, readers: dict[str, str]) -> ValidationError | None:
    """One message for every field that sends mail on to a person: the copy and the forward."""
    reader = readers.get(address.strip().lower())
    if reader is None:
        return None
    return ValidationError(
        DESK_ADDRESS_MESSAGE,
        code="desk_address",
        params={"address": address.strip().lower(), "integration": reader},
    )


# The desk drops every email it would send to an address it reads (mailworker's outbox
# suppresses them: they would come back as new records), so such a target receives nothing.
DESK_ADDRESS_MESSAGE = (
    "%(address)s is one of the desk's own addresses (integration “%(integration)s” reads it): "
    "the desk never sends email there, so nothing would arrive. Choose a person's own address."
)


def validate_copy_incoming_to(*, integration: EmailIntegration) -> None:
    """The copy of each incoming email must go to a person: the desk drops mail to itself."""
    if not integration.copy_incoming_to:
        return
    problem = _desk_address_problem(
        integration.copy_incoming_to, _desk_address_readers(integration)
    )
    if problem is not None:
        raise ValidationError({"copy_incoming_to": problem})


def validate_forward_ignored_to(*, integration: EmailIntegration, users: Iterable) -> None:
    """Forwarded ignored emails must reach a person, not loop back into a desk mailbox.

    Checked both ways: this integration's recipients against every address the desk reads,
    and this integration's own addresses against what other integrations forward to.
    """
    readers = _desk_address_readers(integration)
    problems: list[ValidationError] = []
    for user in users:
        email = (user.email or "").strip().lower()
        if not user.is_staff:
            problems.append(
                ValidationError(
                    "%(user)s is not staff: ignored emails are not for end users.",
                    params={"user": user.username},
                )
            )
        elif not email:
            problems.append(
                ValidationError(
                    "%(user)s has no email address: add one to the user first.",
                    params={"user": user.username},
                )
            )
        else:
            problem = _desk_address_problem(email, readers)
            if problem is not None:
                problems.append(problem)
    if problems:
        raise ValidationError({"forward_ignored_to": problems})
    own = _own_addresses(integration)
    if not own:
        return
    forwarded_elsewhere = (
        EmailIntegration.forward_ignored_to.through.objects.exclude(
            emailintegration_id=integration.pk
        )
        .select_related("emailintegration", "user")
        .filter(user__email__isnull=False)
    )
    for link in forwarded_elsewhere:
        if (link.user.email or "").strip().lower() in own:
            raise ValidationError(
                {
                    "incoming_username": ValidationError(
                        "Integration “%(other)s” forwards ignored emails to %(address)s; reading "
                        "that mailbox here would loop them back. Use another mailbox, or change "
                        "that integration's forwarding first.",
                        params={"other": link.emailintegration.name, "address": link.user.email},
                    )
                }
            )


# The default integration sends what belongs to no record: notifications of system events,
# alerts, invitations (integrations.selectors.sending_integration).
DEFAULT_MUST_SEND_MESSAGE = (
    "The default integration sends the desk's system emails (alerts, invitations, "
    "notifications), so it must have Outgoing Emails on. Turn on Outgoing Emails, or untick "
    "“Use as default email integration” and make an integration that sends the default."
)


def _settle_default_mark(*, integration: EmailIntegration, was_default: bool) -> None:
    """Decide whether `integration` holds the default mark once saved.

    Only an integration that sends may hold it. The mark moves only when another
    integration is ticked: unticking the default that sends keeps it (the desk would
    otherwise have none), which the screen then explains. The first integration that sends
    takes the mark by itself, also from a default that cannot send (stored before this rule).
    """
    sends = integration.outgoing_enabled
    if integration.is_default and not sends:
        raise ValidationError({"is_default": ValidationError(DEFAULT_MUST_SEND_MESSAGE)})
    if integration.is_default or not sends:
        return
    other_sending_default = (
        EmailIntegration.objects.filter(is_default=True, outgoing_enabled=True)
        .exclude(pk=integration.pk)
        .exists()
    )
    if was_default or not other_sending_default:
        integration.is_default = True


def _hand_default_to_a_sender(*, exclude_pk: int | None) -> None:
    """The oldest integration that sends becomes the default, when none holds the mark."""
    if EmailIntegration.objects.filter(is_default=True).exclude(pk=exclude_pk).exists():
        return
    successor = (
        EmailIntegration.objects.filter(outgoing_enabled=True)
        .exclude(pk=exclude_pk)
        .order_by("created_at", "pk")
        .first()
    )
    if successor is not None:
        EmailIntegration.objects.filter(pk=successor.pk).update(is_default=True)


@transaction.atomic
def save_integration(
    *,
    integration: EmailIntegration,
    secrets: Secrets = Secrets(),  # noqa: B008 - frozen, so a shared default is safe
    unless_status_in: Iterable[Status] | None = None,
    forward_ignored_to: Iterable | None = None,
) -> EmailIntegration:
    """Validate and store an integration (new or changed) with its related choices.

    Making it the default takes the mark from the integration that had it, in the same
    transaction; the first integration that sends becomes the default by itself (see
    `_settle_default_mark`).
    """
    _apply_secrets(integration, secrets)
    prefill_trusted_authserv_ids(integration)
    was_default = bool(
        integration.pk
        and EmailIntegration.objects.filter(pk=integration.pk, is_default=True).exists()
    )
    integration.full_clean(validate_constraints=False)
    _settle_default_mark(integration=integration, was_default=was_default)
    check_edition_limits(integration=integration)
    validate_copy_incoming_to(integration=integration)
    forward_users = list(forward_ignored_to) if forward_ignored_to is not None else None
    # Check the stored recipients too when they are not being replaced: a changed mailbox
    # address can turn an existing recipient into a loop.
    recipients_to_check = forward_users
    if recipients_to_check is None:
        recipients_to_check = list(integration.forward_ignored_to.all()) if integration.pk else []
    validate_forward_ignored_to(integration=integration, users=recipients_to_check)
    forget_tokens_of_another_app(integration=integration)
    if integration.is_default:
        # Lock the rows so two admins setting defaults at once serialise here.
        others = EmailIntegration.objects.select_for_update().filter(is_default=True)
        if integration.pk:
            others = others.exclude(pk=integration.pk)
        others.update(is_default=False)
    integration.save()
    if was_default and not integration.is_default:
        # A default that could not send (stored before the rule) was unticked.
        _hand_default_to_a_sender(exclude_pk=integration.pk)
    if unless_status_in is not None:
        integration.unless_status_in.set(unless_status_in)
    if forward_users is not None:
        integration.forward_ignored_to.set(forward_users)
    return integration


@transaction.atomic
def delete_integration(*, integration: EmailIntegration) -> None:
    """Remove an integration; when it was the default, the oldest remaining one that sends
    takes over."""
    was_default = integration.is_default
    integration.delete()
    if was_default:
        _hand_default_to_a_sender(exclude_pk=None)
