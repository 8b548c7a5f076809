"""4. Ignore subject regex. Admins write Java-style patterns (SysAid's syntax, e.g.
`(?iu)(out of office)|(?iu)(automatic reply)`), which only the `regex` package compiles.

A pattern can be catastrophic on some subjects (`(a|aa)+$`), so every match runs with a
timeout; a timeout counts as no match and is reported on the integration's page.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import regex

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, ignore
from mailworker.status import note_subject_regex_timeout

logger = logging.getLogger(__name__)
MATCH_TIMEOUT_SECONDS = 0.2


@lru_cache(maxsize=64)
def compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)


def subject_matches(pattern: str, subject: str) -> bool | None:
    """True or False, or None when the match did not finish in time."""
    try:
        return compiled(pattern).search(subject, timeout=MATCH_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        return None


def check(ctx: EmailContext) -> Verdict:
    pattern = ctx.integration.ignore_subject_regex
    if not pattern:
        return CONTINUE
    try:
        matched = subject_matches(pattern, ctx.email.subject)
    except regex.error as exc:  # saved before validation existed, or edited in the database
        ctx.notes.append(f"ignore-subject pattern does not compile: {exc}")
        return CONTINUE
    if matched is None:
        logger.warning(
            "integration %s: ignore-subject pattern timed out on %r; counted as no match",
            ctx.integration.name,
            ctx.email.subject[:200],
        )
        note_subject_regex_timeout(integration_id=ctx.integration.pk)
        ctx.notes.append("ignore-subject pattern timed out (counted as no match)")
        return CONTINUE
    if matched:
        return ignore("subject matches the ignore-subject pattern")
    return CONTINUE
