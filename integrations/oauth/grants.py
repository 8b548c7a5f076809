"""What a token request brings back, whichever the provider."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

# The grant errors (RFC 6749 5.2, OpenID Connect 3.1.2.6) that retrying cannot fix: the
# user or an admin has to act at the provider or on the integration.
NEEDS_ADMIN_ERRORS = frozenset(
    {
        "invalid_grant",  # refresh token revoked or expired, password changed
        "invalid_client",  # client secret wrong or expired, app deleted
        "unauthorized_client",  # app-only not allowed, delegation not granted
        "invalid_scope",
        "access_denied",
        "consent_required",
        "interaction_required",
    }
)


@dataclass(frozen=True)
class TokenGrant:
    """A new access token, and what came with it.

    refresh_token is "" when the provider sent none (app-only grants; Google usually keeps
    the refresh token it gave at connect): the stored one stays. account is "" when the
    answer does not say whose token it is (refreshes, app-only).
    """

    access_token: str
    expires_at: datetime
    refresh_token: str = ""
    account: str = ""


def expiry_in(seconds: Any) -> datetime:
    try:
        lifetime = int(seconds)
    except (TypeError, ValueError):
        lifetime = 3600  # the usual lifetime, when a provider leaves it out
    return timezone.now() + timedelta(seconds=lifetime)


def error_summary(error: str, description: str | None) -> str:
    """`invalid_grant: AADSTS70000 ...`, the provider's first line only: Microsoft appends
    trace and correlation ids that say nothing to an admin."""
    first_line = (description or "").strip().splitlines()[0] if description else ""
    return f"{error}: {first_line}" if first_line else error
