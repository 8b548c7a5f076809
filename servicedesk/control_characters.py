"""Control characters in names and header values: refused where a person types them, removed
where an email brings them.

compat32, which writes the desk's emails, splits header lines with str.splitlines(): besides
CR and LF it breaks on \\x0b, \\x0c, \\x1c-\\x1e, \\x85, U+2028 and U+2029, so any of them in a
name or a subject could start a header of its own. The rest of Unicode's Cc category (NUL,
ESC, DEL...) has no place in a name either. A leaf module: records, integrations and the mail
engine all use it, and it imports nothing of theirs.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

# Unicode's Cc category is exactly C0 (U+0000-U+001F), DEL and C1 (U+007F-U+009F), fixed
# since Unicode 1.1 (tests/test_control_characters.py checks it against unicodedata); line
# and paragraph separators are not Cc, but splitlines() breaks on them too. One regex
# instead of a category look-up a character: every subject and address the desk queues
# is checked (issue 15's profile).
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def is_control_character(char: str) -> bool:
    return CONTROL_CHARACTER.fullmatch(char) is not None


def first_control_character(text: str) -> str | None:
    """The first control character in `text`, or None."""
    found = CONTROL_CHARACTER.search(text)
    return found.group() if found else None


def describe(char: str) -> str:
    """'U+000B' for a message a person reads: the character itself would not show."""
    return f"U+{ord(char):04X}"


def without_control_characters(text: str) -> str:
    """Each control character becomes a space, then runs of white space one space: a name
    read from an email ("Bob\\x0bSmith") keeps its words."""
    if first_control_character(text) is None:
        return text
    return " ".join(CONTROL_CHARACTER.sub(" ", text).split())


def refuse_control_characters(value: str) -> None:
    """A validator for names people type: the name goes into headers of the desk's emails."""
    char = first_control_character(value or "")
    if char is not None:
        raise ValidationError(
            "This contains a control character (%(char)s), such as a line break or a tab; "
            "names cannot hold them.",
            code="control_character",
            params={"char": describe(char)},
        )
