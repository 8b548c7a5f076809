"""The control characters refused in headers and names (servicedesk.control_characters): one
regex, checked here against the Unicode database of the running Python over every code point."""

from __future__ import annotations

import sys
import unicodedata

from servicedesk.control_characters import (
    first_control_character,
    is_control_character,
    without_control_characters,
)


def test_the_regex_is_unicode_s_cc_category_and_the_line_separators() -> None:
    expected = {
        chr(point)
        for point in range(sys.maxunicode + 1)
        if unicodedata.category(chr(point)) == "Cc" or chr(point) in "\u2028\u2029"
    }
    found = {chr(point) for point in range(sys.maxunicode + 1) if is_control_character(chr(point))}
    assert found == expected
    assert len(found) == 67


def test_first_control_character_and_cleaning() -> None:
    assert first_control_character("Printer on floor 3") is None
    assert first_control_character("Bob\x0bSmith\x00") == "\x0b"
    assert first_control_character("line\u2028break") == "\u2028"
    assert first_control_character("C1\x85here") == "\x85"
    assert without_control_characters("Bob\x0bSmith\r\n  Jr\x7f") == "Bob Smith Jr"
    assert without_control_characters("Zoë Ünal") == "Zoë Ünal"
