"""Secrets at rest: passwords and OAuth tokens are stored Fernet-encrypted.

A database dump shows only `fernet:` tokens. The keys come from settings
(FIELD_ENCRYPTION_KEY, or derived from SECRET_KEY); the first key encrypts and every key
decrypts, so keys can be rotated.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "fernet:"


@cache
def _fernet(keys: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt_secret(plaintext: str) -> str:
    return PREFIX + fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt_secret(stored: str) -> str:
    if not stored.startswith(PREFIX):
        raise ImproperlyConfigured("A stored secret is not encrypted; it was written by hand.")
    try:
        return fernet().decrypt(stored[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored password or token cannot be decrypted with the configured keys. "
            "FIELD_ENCRYPTION_KEY (or SECRET_KEY, from which it is derived when unset) has "
            "changed: put the old key back, or list it after the new one in "
            "FIELD_ENCRYPTION_KEY (comma-separated) to rotate."
        ) from exc


class EncryptedTextField(models.TextField):
    """A text field whose value is encrypted in the database and clear in Python.

    Empty stays empty (no secret set). Lookups other than isnull/exact-empty cannot work on
    ciphertext, so none are offered.
    """

    description = "Text encrypted at rest with Fernet"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        return decrypt_secret(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt_secret(str(value))
