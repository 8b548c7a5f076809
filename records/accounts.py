"""Services of Settings > Users and of "my account": inviting an agent, changing a staff
user's roles and groups, deactivating, and the emails that carry a set-password link.

The links are Django's password reset tokens (django.contrib.auth.tokens): one use, valid
for PASSWORD_RESET_TIMEOUT, void once the password changes. The emails are sent by the mail
engine (records never imports it): the services fire account_email_requested and the mail
engine queues the email through the sending integration, in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from integrations import selectors as integration_selectors
from integrations.services import addresses_read_by_incoming_integrations
from records import selectors, signals
from records.models import AdminGroup, User
from records.services import _free_username, find_user_by_email

NO_SENDING_INTEGRATION = (
    "The desk cannot send email: no integration has Outgoing Emails turned on. Set one up in "
    "Settings > Email (and make it the default), then try again."
)


class CannotSendEmail(Exception):
    """No integration sends: an email with a link would never leave the desk."""

    def __init__(self) -> None:
        super().__init__(NO_SENDING_INTEGRATION)


def desk_can_send() -> bool:
    return integration_selectors.sending_integration() is not None


def set_password_link(*, user: User, base_url: str) -> str:
    """The absolute link to choose a password (Django's password reset confirm view)."""
    path = reverse(
        "password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    return base_url.rstrip("/") + path


def role_names(user: User) -> str:
    return ", ".join(group.name for group in user.groups.order_by("name")) or "a member of the team"


def send_invitation(*, user: User, invited_by: User | None, base_url: str) -> None:
    """Email `user` a link to choose a password. Raises CannotSendEmail."""
    if not desk_can_send():
        raise CannotSendEmail()
    signals.account_email_requested.send(
        sender=User,
        user=user,
        kind="invitation",
        link=set_password_link(user=user, base_url=base_url),
        invited_by=invited_by,
        roles=role_names(user),
    )


def send_password_reset(*, user: User, base_url: str) -> None:
    """Email `user` a link to choose a new password (the forgotten-password form). Raises
    CannotSendEmail."""
    if not desk_can_send():
        raise CannotSendEmail()
    signals.account_email_requested.send(
        sender=User,
        user=user,
        kind="password_reset",
        link=set_password_link(user=user, base_url=base_url),
    )


def check_address_is_not_the_desk_s(email: str) -> None:
    """A person's address must not be one the desk reads: mail to it would come back as a
    record (and the desk refuses to send there)."""
    if email.strip().lower() in addresses_read_by_incoming_integrations():
        raise ValidationError(
            {
                "email": f"{email} is an address the desk reads (Settings > Email): use the "
                "person's own address."
            }
        )


@transaction.atomic
def invite_user(
    *,
    first_name: str,
    last_name: str,
    email: str,
    roles: Iterable[Group],
    admin_groups: Iterable[AdminGroup] = (),
    invited_by: User | None,
    base_url: str,
) -> tuple[User, bool]:
    """A staff user with no password yet, and an email with the link to choose one.

    Returns (user, was_end_user): an address the desk already knows as an end user (someone
    who wrote to the desk) becomes that user's staff account, keeping their records. Raises
    ValidationError (address taken by staff, or the desk's own) or CannotSendEmail; nothing
    is saved then."""
    if not desk_can_send():
        raise CannotSendEmail()
    email = email.strip()
    check_address_is_not_the_desk_s(email)
    user = find_user_by_email(email=email)
    was_end_user = user is not None
    if user is not None and user.is_staff:
        state = "" if user.is_active else " (deactivated: reactivate it on its page)"
        raise ValidationError(
            {"email": f"{email} already has a staff account, {user.get_username()}{state}."}
        )
    if user is None:
        user = User(username=_free_username(email), email=email)
        user.set_unusable_password()
    user.first_name = first_name.strip() or user.first_name
    user.last_name = last_name.strip() or user.last_name
    user.is_staff = True
    user.is_active = True
    user.full_clean()
    user.save()
    user.groups.set(list(roles))
    user.admin_groups.set(list(admin_groups))
    send_invitation(user=user, invited_by=invited_by, base_url=base_url)
    return user, was_end_user


def _check_someone_can_still_manage_users() -> None:
    if not selectors.user_managers().exists():
        raise ValidationError(
            "That would leave no active user who can manage users (the Administrator role). "
            "Give another user that role first."
        )


@transaction.atomic
def update_staff_user(
    *,
    user: User,
    first_name: str,
    last_name: str,
    email: str,
    roles: Iterable[Group],
    admin_groups: Iterable[AdminGroup],
) -> None:
    """Save a staff user's details, roles and groups. Raises ValidationError (e.g. when no
    one would be left to manage users); nothing is saved then."""
    email = email.strip()
    if email.lower() != user.email.lower():
        check_address_is_not_the_desk_s(email)
    user.first_name, user.last_name, user.email = first_name.strip(), last_name.strip(), email
    user.full_clean()
    user.save(update_fields=["first_name", "last_name", "email"])
    user.groups.set(list(roles))
    user.admin_groups.set(list(admin_groups))
    _check_someone_can_still_manage_users()


@transaction.atomic
def set_user_active(*, user: User, active: bool, actor: User) -> None:
    """Deactivate (the user can no longer log in; their records and messages stay) or
    reactivate. Nobody deactivates themselves, nor the last user who can manage users."""
    if not active and user.pk == actor.pk:
        raise ValidationError("You cannot deactivate your own account.")
    user.is_active = active
    user.save(update_fields=["is_active"])
    if not active:
        _check_someone_can_still_manage_users()


def update_own_account(*, user: User, first_name: str, last_name: str, email: str) -> None:
    """ "My account": a user's own name and address. Raises ValidationError. A fresh copy is
    changed, so that the request's user still shows what is saved when this refuses."""
    user = User.objects.get(pk=user.pk)
    email = email.strip()
    if email.lower() != user.email.lower():
        check_address_is_not_the_desk_s(email)
    user.first_name, user.last_name, user.email = first_name.strip(), last_name.strip(), email
    user.full_clean()
    user.save(update_fields=["first_name", "last_name", "email"])
