"""The desk's own Message-IDs, signed, so that a reply's headers can prove which record it is
about.

Anyone can write any Message-ID, In-Reply-To or References: they are the sender's words, and
two emails may share an id (a stranger who was in Cc can reuse the requester's). Only an id
the desk made itself says something: `<sd.124.k3x9....mac@desk.example>` names record 124,
a random part that makes each id unique, and an HMAC over both with a key derived from
SECRET_KEY for this purpose alone (Django's salted_hmac: a key salt of its own, so the MAC is
no use to any other part of the project, and none of theirs to it). Nobody without the key
can make an id that names a record, and one that names record 124 cannot be edited to name
record 125.

Every part is lowercase letters, digits and dots, so a mail server that folds the case of a
header hands back an id that still verifies: the id is compared in lowercase, which loses
nothing because the desk never makes an uppercase one. The domain is not checked (the
integration's address may change; the MAC is what counts).
"""

from __future__ import annotations

import base64
import re
import secrets

from django.conf import settings
from django.utils.crypto import constant_time_compare, get_random_string, salted_hmac

KEY_SALT = "servicedesk.mailworker.outbound.message_ids"
PREFIX = "sd"
# The random part only makes ids unique (the MAC is what cannot be guessed): 12 of these
# characters are about 62 random bits. A short id stays on the header's line with a short
# domain; a longer one is folded onto the next (legal, and what Exchange does with its own).
NONCE_CHARS = 12
NONCE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
MAC_BYTES = 16  # 128 bits, 26 characters of base32 (no padding: 16 bytes make 26 and "======")
MAC_CHARS = 26
FALLBACK_DOMAIN = "servicedesk.invalid"
# Longer than any id we make (with a domain of 253 characters); anything longer is not ours
# and is not even looked at.
MAX_SIGNED_ID_CHARS = 340
# Record numbers as the desk writes them: no sign, no leading zero, at most 12 digits.
SIGNED_ID = re.compile(
    rf"<{PREFIX}\.(?P<record>[1-9][0-9]{{0,11}})\.(?P<nonce>[a-z0-9]{{{NONCE_CHARS}}})"
    rf"\.(?P<mac>[a-z2-7]{{{MAC_CHARS}}})@[a-z0-9.-]{{1,253}}>"
)


def _domain(domain: str) -> str:
    """The part after the @: the integration's domain when it is a plain one, lowercase."""
    domain = domain.strip().lower()
    return domain if re.fullmatch(r"[a-z0-9.-]{1,253}", domain) else FALLBACK_DOMAIN


def _mac(*, record_id: int, nonce: str, secret: str) -> str:
    digest = salted_hmac(
        KEY_SALT, f"{record_id}.{nonce}", secret=secret, algorithm="sha256"
    ).digest()
    return base64.b32encode(digest[:MAC_BYTES]).decode("ascii").rstrip("=").lower()


def _nonce() -> str:
    """NONCE_CHARS random characters of base32's lowercase alphabet (a subset of
    NONCE_ALPHABET), 60 bits: one call to the system's random source instead of one a
    character (get_random_string), which counted when a chunk queues a hundred emails."""
    return base64.b32encode(secrets.token_bytes(8)).decode("ascii")[:NONCE_CHARS].lower()


def sign_message_id(*, record_id: int, domain: str) -> str:
    """A new Message-ID for an email about record `record_id`, signed."""
    if record_id < 1:
        raise ValueError(f"a record number is positive, not {record_id}")
    nonce = _nonce()
    mac = _mac(record_id=record_id, nonce=nonce, secret=settings.SECRET_KEY)
    return f"<{PREFIX}.{record_id}.{nonce}.{mac}@{_domain(domain)}>"


def unsigned_message_id(*, domain: str) -> str:
    """A Message-ID for an email about no record (a test, an alert): it threads nowhere."""
    nonce = get_random_string(24, allowed_chars=NONCE_ALPHABET)
    return f"<{PREFIX}.{nonce}@{_domain(domain)}>"


def record_of_signed_message_id(value: str) -> int | None:
    """The record a Message-ID names when the desk made and signed it, else None.

    The MAC is checked against SECRET_KEY and then each of SECRET_KEY_FALLBACKS, so replies
    to emails sent before a key rotation still thread while the old key is listed there.
    """
    value = value.strip()
    # ASCII first: str.lower() maps a few other characters onto ASCII letters (the Kelvin
    # sign onto "k"), and an id of ours has only one spelling besides its uppercase one.
    if len(value) > MAX_SIGNED_ID_CHARS or not value.isascii():
        return None
    shape = SIGNED_ID.fullmatch(value.lower())
    if shape is None:
        return None
    record_id, nonce = int(shape["record"]), shape["nonce"]
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    for secret in keys:
        if constant_time_compare(
            shape["mac"], _mac(record_id=record_id, nonce=nonce, secret=secret)
        ):
            return record_id
    return None
