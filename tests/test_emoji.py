"""Emoji removal removes emoji (issue 13, part 5): characters with emoji presentation and
their sequences (ZWJ, skin tones, flags, keycaps, VS16), never text symbols such as ©, ®, ™,
☎ or ✓ (unless VS16 makes them emoji), and no stray space before punctuation."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from mailworker.pipeline.passes import run_pass
from mailworker.text import is_emoji_presentation, remove_emojis
from records.models import ServiceRecord

REMOVED = [
    ("won't boot 😡.", "won't boot."),
    ("Hi 👋 there", "Hi there"),
    ("Printer 🔥🔥 broken 👍🏽 again 🇩🇪", "Printer broken again"),
    ("family 👨‍👩‍👧 keycap 1️⃣ end", "family keycap end"),
    ("Scotland 🏴󠁧󠁢󠁳󠁣󠁴󠁿 wins", "Scotland wins"),  # a tag sequence
    ("call me ☎️ now", "call me now"),  # a text symbol made emoji by VS16
    ("love ❤️, Ann", "love, Ann"),
    ("Really 😂😂 ?!", "Really?!"),
    ("(🙂 just kidding)", "(just kidding)"),
    ("done ✅!", "done!"),
    ("⌚ watch", "watch"),  # Emoji_Presentation=Yes at the start of a line
    ("🚨 Outage\nThanks 🙏 a lot\n  indented 👀", "Outage\nThanks a lot\n  indented"),
    ("你好😀。", "你好。"),
]

KEPT = [
    "Acme® Printer™ © 2026",
    "☎ +49 30 1234",
    "✓ done, ✔ checked",
    "I ❤ NY",  # U+2764 without VS16 is a text symbol
    "Temperature 30°C ± 2 → ok",
    "no emoji here,  two spaces kept",
    "1. item\n2. item",
    "a # b * c 5",  # keycap bases alone are ASCII
    "",
]


@pytest.mark.parametrize(("text", "expected"), REMOVED)
def test_emoji_and_their_sequences_are_removed(text: str, expected: str) -> None:
    assert remove_emojis(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_text_symbols_and_plain_text_are_kept(text: str) -> None:
    assert remove_emojis(text) == text


def test_text_symbols_go_only_with_vs16() -> None:
    assert remove_emojis("© ©\ufe0f ™ ™\ufe0f ✔ ✔\ufe0f") == "© ™ ✔"
    assert remove_emojis("☎\ufe0e old phone") == "☎\ufe0e old phone"  # VS15: text, kept


@pytest.mark.parametrize(
    ("sequence", "emoji"),
    [("😀", True), ("👍🏽", True), ("🇫🇷", True), ("#️⃣", True), ("©", False), ("❤", False)],
)
def test_emoji_presentation(sequence: str, emoji: bool) -> None:
    assert is_emoji_presentation(sequence) is emoji


@pytest.mark.django_db
def test_a_record_keeps_text_symbols_and_loses_emoji(dovecot, dovecot_integration) -> None:
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    message = EmailMessage()
    message["From"] = "Ann <ann@customer.test>"
    message["To"] = "support@desk.test"
    message["Subject"] = "Acme® Printer™ won't boot 😡."
    message["Message-ID"] = make_msgid(domain="customer.test")
    message.set_content("Hi 👋 there, the ☎ line works ✓ but the printer 🖨️ does not 👎🏻.")
    dovecot.deliver(integration.incoming_username, message.as_bytes())

    report = run_pass(integration=integration, batch_size=500)

    assert not report.failed, report.errors
    record = ServiceRecord.objects.get()
    assert record.title == "Acme® Printer™ won't boot."
    assert record.description.strip() == ("Hi there, the ☎ line works ✓ but the printer does not.")
