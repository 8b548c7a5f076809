"""What each edition allows. The edition is the EDITION setting (basic, full, enterprise)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError

from integrations.models import EmailIntegration


@dataclass(frozen=True)
class EditionLimits:
    max_incoming: int | None  # None: unlimited
    max_outgoing: int | None
    copy_incoming: bool


EDITION_LIMITS = {
    "basic": EditionLimits(max_incoming=2, max_outgoing=1, copy_incoming=False),
    "full": EditionLimits(max_incoming=None, max_outgoing=None, copy_incoming=False),
    "enterprise": EditionLimits(max_incoming=None, max_outgoing=None, copy_incoming=True),
}


def current_limits() -> EditionLimits:
    return EDITION_LIMITS[settings.EDITION]


def check_edition_limits(*, integration: EmailIntegration) -> None:
    """Refuse an integration that would take the desk past its edition's counts."""
    limits = current_limits()
    others = EmailIntegration.objects.all()
    if integration.pk:
        others = others.exclude(pk=integration.pk)
    errors = {}
    if (
        integration.incoming_enabled
        and limits.max_incoming is not None
        and others.filter(incoming_enabled=True).count() >= limits.max_incoming
    ):
        errors["incoming_enabled"] = ValidationError(
            "The %(edition)s edition allows %(limit)d incoming integrations and there are "
            "already %(limit)d. Turn off Incoming Emails here or on another integration.",
            params={"edition": settings.EDITION, "limit": limits.max_incoming},
            code="edition_limit",
        )
    if (
        integration.outgoing_enabled
        and limits.max_outgoing is not None
        and others.filter(outgoing_enabled=True).count() >= limits.max_outgoing
    ):
        errors["outgoing_enabled"] = ValidationError(
            "The %(edition)s edition allows %(limit)d outgoing integration(s) and there are "
            "already %(limit)d. Turn off Outgoing Emails here or on another integration.",
            params={"edition": settings.EDITION, "limit": limits.max_outgoing},
            code="edition_limit",
        )
    if integration.copy_incoming_to and not limits.copy_incoming:
        errors["copy_incoming_to"] = ValidationError(
            "Sending a copy of incoming emails needs the enterprise edition (this desk runs "
            "the %(edition)s edition); clear this field.",
            params={"edition": settings.EDITION},
            code="edition_limit",
        )
    if errors:
        raise ValidationError(errors)
