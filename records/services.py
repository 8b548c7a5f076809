"""Services of the records app: people and records. Plain functions, keyword arguments."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from records.models import User

USERNAME_MAX_LENGTH = 150


def find_user_by_email(*, email: str) -> User | None:
    email = email.strip()
    if not email:
        return None
    return get_user_model().objects.filter(email__iexact=email).first()


def _free_username(email: str) -> str:
    """The address itself when free (it is what end users know), else with a suffix."""
    base = email.strip().lower()[:USERNAME_MAX_LENGTH]
    user_model = get_user_model()
    if not user_model.objects.filter(username=base).exists():
        return base
    while True:
        candidate = f"{base[: USERNAME_MAX_LENGTH - 7]}-{secrets.token_hex(3)}"
        if not user_model.objects.filter(username=candidate).exists():
            return candidate


def get_or_create_end_user(*, email: str, display_name: str = "") -> tuple[User, bool]:
    """The user with this address, or a new end user for an unregistered sender.

    An end user has no staff rights and an unusable password: they work with the desk by email
    only until an admin invites them. Two workers seeing the same new sender at once both end
    with the one user, thanks to the case-insensitive unique email constraint.
    """
    existing = find_user_by_email(email=email)
    if existing is not None:
        return existing, False
    first_name, _, last_name = display_name.strip().partition(" ")
    user = get_user_model()(
        username=_free_username(email),
        email=email.strip(),
        first_name=first_name[:150],
        last_name=last_name[:150],
        is_staff=False,
    )
    user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        existing = find_user_by_email(email=email)
        if existing is None:
            raise
        return existing, False
    return user, True


def ensure_default_statuses() -> None:
    """Create any of the default statuses that is missing (the migration does this once)."""
    from records.defaults import DEFAULT_STATUSES
    from records.models import Status

    for name, order, is_closed in DEFAULT_STATUSES:
        Status.objects.get_or_create(name=name, defaults={"order": order, "is_closed": is_closed})
