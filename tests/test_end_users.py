"""Unregistered senders become end users: no staff rights, no password, found by address."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from records.services import get_or_create_end_user

pytestmark = pytest.mark.django_db


def test_an_unregistered_sender_becomes_an_end_user() -> None:
    user, created = get_or_create_end_user(email="Jane.Doe@Customer.test", display_name="Jane Doe")
    assert created is True
    assert (user.username, user.email) == ("jane.doe@customer.test", "Jane.Doe@Customer.test")
    assert (user.first_name, user.last_name) == ("Jane", "Doe")
    assert user.is_end_user and not user.is_staff and not user.is_superuser
    assert user.has_usable_password() is False


def test_a_known_sender_is_found_whatever_the_case(end_user) -> None:
    user, created = get_or_create_end_user(email="JANE@customer.TEST")
    assert created is False
    assert user.pk == end_user.pk
    assert get_user_model().objects.count() == 1


def test_a_taken_username_gets_a_suffix(django_user_model) -> None:
    django_user_model.objects.create_user(username="bob@example.com", email="")
    user, created = get_or_create_end_user(email="bob@example.com")
    assert created is True
    assert user.username.startswith("bob@example.com-")


def test_two_users_cannot_share_an_address(end_user, django_user_model) -> None:
    other = django_user_model(username="copy", email="Jane@Customer.Test")
    with pytest.raises(ValidationError) as exc_info:
        other.full_clean()
    assert "Another user already has this email address." in str(exc_info.value)
