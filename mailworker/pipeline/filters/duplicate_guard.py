"""6. Duplicate guard: an email whose sender, subject and body equal one of the last 1,000
processed does not open another record (mail loops, users sending twice, one email reaching
two of our mailboxes). The memory is the processed markers in the database, so every worker
shares it. Senders on the integration's exempt list (by address, or by the username of the
user with that address) are never duplicates: monitoring systems send the same text on
purpose.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth import get_user_model

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, duplicate
from mailworker.pipeline.lookups import ChunkLookups
from records import write_behind
from records.models import ProcessedEmail

WINDOW = 1000


def fingerprint(*, sender: str, subject: str, body: str) -> str:
    # Whitespace differences (re-wrapping, trailing spaces) do not make a different email.
    normalised = "\n".join(" ".join(part.split()) for part in (sender.lower(), subject, body))
    return hashlib.sha256(normalised.encode("utf-8", "replace")).hexdigest()


def is_exempt(ctx: EmailContext) -> bool:
    """Entries with an @ are addresses; the others are usernames of users."""
    exempt = ctx.integration.duplicate_exempt_senders
    sender = ctx.email.from_address
    if not exempt or not sender:
        return False
    if sender in {entry for entry in exempt if "@" in entry}:
        return True
    usernames = [entry for entry in exempt if "@" not in entry]
    return bool(usernames) and (
        get_user_model().objects.filter(email__iexact=sender, username__in=usernames).exists()
    )


def seen_recently(fingerprint_value: str, chunk: ChunkLookups | None = None) -> bool:
    """Whether one of the WINDOW newest markers has this fingerprint.

    Most emails are new: one indexed look-up of the newest marker with the fingerprint
    answers them. Only for a match do we ask whether it is among the newest WINDOW, by
    counting at most WINDOW + 1 markers from it on the primary key (not by an OFFSET over
    the whole table for every email, which cost a scan of 1,000 rows each time).
    `chunk`: the newest markers of the chunk's fingerprints, read for all its emails at once."""
    known, newest_match = chunk.newest_marker(fingerprint_value) if chunk else (False, None)
    if not known:
        newest_match = (
            ProcessedEmail.objects.filter(fingerprint=fingerprint_value)
            .order_by("-id")
            .values_list("id", flat=True)
            .first()
        )
    if newest_match is None:
        return False
    write_behind.write_pending()  # the chunk's markers count among the newest
    newer_or_same = ProcessedEmail.objects.filter(id__gte=newest_match).order_by("id")
    return not newer_or_same[WINDOW : WINDOW + 1].exists()


def check(ctx: EmailContext) -> Verdict:
    email = ctx.email
    ctx.fingerprint = fingerprint(
        sender=email.from_address, subject=email.subject, body=email.text_body
    )
    if ctx.record is not None or is_exempt(ctx):
        return CONTINUE
    if seen_recently(ctx.fingerprint, ctx.chunk):
        return duplicate("same sender, subject and body as one of the last 1,000 emails")
    return CONTINUE
