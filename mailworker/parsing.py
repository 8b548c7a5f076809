"""parse_email: the raw bytes of one received email -> InboundEmail, never raising.

Odd input is normalised and noted in `defects`, never fatal (DESIGN.md, "Incoming").

The stdlib parser builds the MIME tree with policy.compat32: its Content-Type parameters are
the lenient kind mail clients agree with (an unquoted boundary with "=" in it), and it is fast
where policy.default parses every Content-Type it looks at (flanker/enclosed-endless.eml: 1.4 s
of 2). Header values are read from their raw source and decoded here; policy.default's strict
parser is used for addresses only, with a lenient fallback, because it raises on input mail
servers really deliver (see corpus/README.md, "Known traps").
"""

from __future__ import annotations

import binascii
import dataclasses
import itertools
import mimetypes
import re
import time
from collections.abc import Iterable
from datetime import UTC
from email import policy
from email.message import Message
from email.parser import BytesFeedParser, BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from urllib.parse import unquote

from mailworker.from_header import read_sender
from mailworker.html import sanitise_html
from mailworker.inbound import InboundEmail, ParsedAttachment
from mailworker.text import (
    clean_text,
    codec_for,
    collapse_whitespace,
    decode_base64,
    decode_encoded_words,
    decode_text,
    detect_charset,
    html_to_text,
    normalise_charset,
    remove_emojis,
    undo_surrogateescape,
)
from servicedesk.control_characters import without_control_characters

__all__ = ["parse_email", "remove_emojis", "sanitise_html"]

# Bounds on the work one message may cost the worker.
TIME_LIMIT_SECONDS = 10.0
MAX_MIME_DEPTH = 20
MAX_PARTS = 1000
FEED_CHUNK_BYTES = 64 * 1024
# Bounds on what is kept.
MAX_HEADER_VALUE_CHARS = 10_000
MAX_HEADERS_CHARS = 256_000
MAX_HEADER_VALUES = 2_000
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit, and the message log's column
MAX_MESSAGE_ID_CHARS = 998
MAX_REFERENCES = 500
MAX_DEFECTS = 100
# Raw 8-bit header bytes given to charset detection at most.
MAX_HEADER_DETECTION_BYTES = 16_000
# The stdlib's address parser is exact but slow on huge values; beyond this, read leniently.
MAX_STRICT_ADDRESS_CHARS = 20_000
MAX_FILENAME_CHARS = 255

# Transfer encodings get_payload(decode=True) undoes itself, when they are spelt exactly so.
_STDLIB_DECODES = {"base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"}
_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
_FORWARDED_TYPES = {"message/rfc822", "message/global", "message/news"}
# Extensions for parts that arrive without a name; mimetypes covers the rest.
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "application/pdf": ".pdf",
    "application/octet-stream": ".bin",
}
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_CID_REFERENCE = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MESSAGE_ID = re.compile(r"<([^<>]*)>")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9._+-]*")
_BOUNDARY_PARAM = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))""", re.IGNORECASE)
_HTML_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([a-zA-Z0-9_.:-]+)""", re.I)


class _Defects:
    """Notes on what was odd, each once, and a bounded number of them."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def add(self, note: str) -> None:
        note = clean_text(note)[:300]
        if note not in self.notes and len(self.notes) < MAX_DEFECTS:
            self.notes.append(note)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.at


def parse_email(raw: bytes, *, time_limit: float = TIME_LIMIT_SECONDS) -> InboundEmail:
    """Parse one raw email. Never raises: whatever cannot be read is noted in `defects` and
    the rest is still returned; every text in the result is clean for any database."""
    deadline = _Deadline(time_limit)
    defects = _Defects()
    if isinstance(raw, str):  # not what mailboxes give, but not worth losing a message over
        defects.add("given text instead of bytes")
        raw = raw.encode("utf-8", "surrogateescape")
    raw = bytes(raw)
    email = InboundEmail(raw_size=len(raw))
    try:
        _parse_into(email, raw, deadline, defects)
    except Exception as error:  # a parser that raises loses the message
        defects.add(f"parsing stopped: {type(error).__name__}: {error}")
    email.defects = defects.notes
    return _cleaned(email)


def _parse_into(email: InboundEmail, raw: bytes, deadline: _Deadline, defects: _Defects) -> None:
    raw = _repaired_header_block(raw, defects)
    message, structure_ok = _parse_mime(raw, deadline, defects)
    hint = _charset_hint(message)
    # Each step reads on its own: one that fails costs its own fields, not the others'.
    steps = (
        ("headers", lambda: _read_headers(email, message, defects, hint)),
        ("addresses", lambda: _read_addresses(email, message, defects, hint)),
        ("message ids", lambda: _read_message_ids(email, message, defects)),
        ("subject", lambda: _read_subject(email, message, defects, hint)),
        ("date", lambda: _read_date(email, message, defects)),
        ("content type", lambda: _read_content_type(email, message)),
        ("body", lambda: _read_body(email, message, structure_ok, deadline, defects)),
    )
    for name, step in steps:
        try:
            step()
        except Exception as error:  # see parse_email
            defects.add(f"{name} unreadable: {type(error).__name__}: {error}")


# Header repair -------------------------------------------------------------------------------

# A header line as the stdlib's feed parser sees one (email.feedparser.headerRE).
_STDLIB_HEADER_LINE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
# A header line as real headers look: a name of letters, digits and - _ . and a colon (not a
# URL's "https://", which a broken fold of a long header often starts with).
_PLAUSIBLE_HEADER = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}[ \t]*:(?!//)")
_KNOWN_HEADER = re.compile(
    rb"^(from|to|cc|subject|date|message-id|received|return-path|mime-version|"
    rb"delivered-to|reply-to|sender|content-type|x-[a-z0-9-]+)[ \t]*:",
    re.IGNORECASE,
)
# The obsolete syntax's white space before the colon ("Subject  : Hello", RFC 5322 4.5),
# which the stdlib does not take for a header.
_SPACE_BEFORE_COLON = re.compile(rb"^([A-Za-z0-9][A-Za-z0-9_.-]{0,99})[ \t]+:")
_BOM = b"\xef\xbb\xbf"
# How far the repair looks: leading junk is a line or two, and a header block this long is
# already cut by MAX_HEADERS_CHARS.
MAX_JUNK_LINES = 10
MAX_REPAIR_BYTES = 512 * 1024


def _repaired_header_block(raw: bytes, defects: _Defects) -> bytes:
    """The email as the stdlib should see it: real mail has junk before its headers (an mbox
    "From " or ">From" line, a blank or garbage line, a BOM) and long headers folded without
    the leading white space, and the stdlib then takes every header for body (no From, no
    Subject). Repairs only what is parsed: the original bytes are kept as they came
    elsewhere; what was repaired is noted in the defects."""
    head = raw[:MAX_REPAIR_BYTES]
    if not head or head[:1] in (b" ", b"\t"):
        return raw
    start = 0
    if head.startswith(_BOM):
        start = len(_BOM)
        defects.add("header repair: byte order mark before the headers skipped")
    if _PLAUSIBLE_HEADER.match(head, start):
        # No junk: only the header block matters (not the megabytes of a body after it).
        blank = _BLANK_LINE.search(head, start)
        if blank is None:
            return raw[start:] if start else raw
        head = head[: blank.end()]
    lines = head[start:].splitlines(keepends=True)
    skipped = _leading_junk(lines)
    if skipped:
        shown = ", ".join(repr(_shown_line(line)) for line in lines[:skipped])
        defects.add(f"header repair: {skipped} line(s) before the headers skipped: {shown}")
        start += sum(len(line) for line in lines[:skipped])
        lines = lines[skipped:]
    joined, block_end = _joined_broken_folds(lines, defects)
    if joined is None:
        return raw[start:] if start else raw
    return b"".join(joined) + raw[start + block_end :]


def _shown_line(line: bytes) -> str:
    return line.rstrip(b"\r\n")[:80].decode("utf-8", "replace")


def _is_blank(line: bytes) -> bool:
    return line in (b"\r\n", b"\n", b"\r")


def _leading_junk(lines: list[bytes]) -> int:
    """How many lines before the first header line are junk: only when a header block with a
    header every email has follows (else the email may have no headers at all)."""
    if not lines or _PLAUSIBLE_HEADER.match(lines[0]):
        return 0
    for index, line in enumerate(lines[: MAX_JUNK_LINES + 1]):
        if _PLAUSIBLE_HEADER.match(line):
            following = lines[index : index + 50]
            block = following[: next((i for i, x in enumerate(following) if _is_blank(x)), 50)]
            known = sum(1 for each in block if _KNOWN_HEADER.match(each))
            return index if known >= 2 else 0
    return 0


def _header_or_fold(line: bytes) -> bool:
    """A header line, a proper fold, or an envelope "From " line (which the stdlib knows)."""
    return (
        bool(_PLAUSIBLE_HEADER.match(line))
        or line[:1] in (b" ", b"\t")
        or (line.startswith(b"From "))
    )


def _joined_broken_folds(lines: list[bytes], defects: _Defects) -> tuple[list[bytes] | None, int]:
    """The header block with lines that are no header (a fold without its leading white
    space) joined to the header before them: a run of them counts as a fold when a header
    line follows it, or when it runs up to the blank line and reads as one long token (the
    tail of a long X- header; prose there is a body that came without its blank line).
    Returns the repaired lines and the length of the header block they replace, or None
    when there is nothing to repair."""
    if not lines or not _PLAUSIBLE_HEADER.match(lines[0]):
        return None, 0
    end = next((i for i, line in enumerate(lines) if _is_blank(line)), len(lines))
    if end == len(lines):
        return None, 0  # no blank line: where the headers end is anyone's guess
    block = lines[:end]
    repaired: list[bytes] = []
    changed = spaced = 0
    index = 0
    while index < len(block):
        line = block[index]
        if _header_or_fold(line):
            unspaced = _SPACE_BEFORE_COLON.sub(rb"\1:", line, count=1)
            spaced += unspaced != line
            repaired.append(unspaced)
            index += 1
            continue
        run_end = index
        while run_end < len(block) and not _header_or_fold(block[run_end]):
            run_end += 1
        run = block[index:run_end]
        is_fold = run_end < len(block) or all(len(each.split()) <= 1 for each in run)
        if not is_fold:
            if any(not _STDLIB_HEADER_LINE.match(each) for each in run):
                return None, 0  # a body without its blank line: the stdlib reads it so
            repaired.extend(run)
        else:
            repaired.extend(b" " + each for each in run)
            changed += len(run)
        index = run_end
    if not changed and not spaced:
        return None, 0
    if changed:
        defects.add(
            f"header repair: {changed} line(s) without a header name joined to the header "
            "before them (folded without white space)"
        )
    if spaced:
        defects.add(f"header repair: white space before the colon removed in {spaced} header(s)")
    return repaired, sum(len(line) for line in block)


def _parse_mime(raw: bytes, deadline: _Deadline, defects: _Defects) -> tuple[Message, bool]:
    """The MIME tree, fed in chunks so that the time limit also bounds parsing (the first
    chunk always goes in: it holds the headers). When the structure cannot be parsed at all,
    the headers and the body as one text."""
    parser = BytesFeedParser(policy=policy.compat32)
    try:
        for start in range(0, len(raw), FEED_CHUNK_BYTES):
            if start and deadline.passed():
                defects.add(f"time limit: parsed only the first {start} of {len(raw)} bytes")
                break
            parser.feed(raw[start : start + FEED_CHUNK_BYTES])
        message = parser.close()
    except Exception as error:  # e.g. RecursionError on absurd nesting
        defects.add(f"MIME structure unreadable ({type(error).__name__}); body kept as text")
        return BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True), False
    for defect in getattr(message, "defects", ()):
        defects.add(f"MIME: {type(defect).__name__}")
    return message, True


# Headers ------------------------------------------------------------------------------------


def _raw_values(part: Message, name: str) -> list[str]:
    """The raw source of every `name` header of a part: never parsed by the policy, which
    raises on some of them."""
    name = name.lower()
    return [value for key, value in part.raw_items() if key.strip().lower() == name]


def _decode_header(raw: str, defects: _Defects | None = None, hint: str = "") -> str:
    """A raw header value as text: 8-bit bytes decoded (UTF-8 per RFC 6532, else the body's
    charset, else windows-1252), folding undone, encoded words decoded."""
    text, note = undo_surrogateescape(raw, hint)
    text, word_note = decode_encoded_words(_unfold(text))
    if defects is not None:
        for each in (note, word_note):
            if each:
                defects.add(f"header: {each}")
    return text.strip()


def _charset_hint(message: Message) -> str:
    """What raw 8-bit headers (Subject and From in GB2312 or Shift_JIS without encoded words)
    are most likely in: the charset the first text part declares, when it names a specific
    one; else, when no 8-bit header is UTF-8, the charset charset-normalizer detects in all
    of them together (one subject alone is too short to tell). guess_decode tries it first,
    then UTF-8, then its own detection, then windows-1252."""
    declared = _declared_charset(message)
    if codec_for(normalise_charset(declared)) not in (None, "utf-8", "cp1252", "ascii"):
        return declared
    try:
        data = b"\n".join(
            value.encode("utf-8", "surrogateescape")
            for _, value in itertools.islice(message.raw_items(), MAX_HEADER_VALUES)
            if not value.isascii()
        )[:MAX_HEADER_DETECTION_BYTES]
    except Exception:  # only a hint
        return declared
    if not data:
        return declared
    try:
        data.decode("utf-8")
        return declared  # UTF-8 headers (RFC 6532): no guessing needed
    except UnicodeDecodeError:
        pass
    return detect_charset(data) or declared


def _declared_charset(message: Message) -> str:
    """The charset of the first text part."""
    try:
        for number, part in enumerate(message.walk()):
            if number > 20:
                break
            if part.get_content_maintype() == "text" and part.get_content_charset():
                return part.get_content_charset() or ""
    except Exception:  # only a hint
        return ""
    return ""


def _unfold(value: str) -> str:
    """RFC 5322 unfolding: a line break followed by white space is not there; stray line
    breaks count as spaces."""
    return _FOLD.sub("", value).replace("\r", " ").replace("\n", " ")


def _read_headers(email: InboundEmail, message: Message, defects: _Defects, hint: str) -> None:
    headers: dict[str, list[str]] = {}
    total = 0
    for count, (name, raw) in enumerate(message.raw_items(), start=1):
        key = clean_text(name).strip().lower()[:200]
        value = _decode_header(raw, defects, hint)
        if len(value) > MAX_HEADER_VALUE_CHARS:
            defects.add(f"header {key!r} cut to {MAX_HEADER_VALUE_CHARS} characters")
            value = value[:MAX_HEADER_VALUE_CHARS]
        total += len(value)
        if total > MAX_HEADERS_CHARS or count > MAX_HEADER_VALUES:
            defects.add("too many headers; the rest were not kept")
            break
        headers.setdefault(key, []).append(value)
    email.headers = headers


def _first_header(part: Message, name: str) -> str:
    values = _raw_values(part, name)
    return _decode_header(values[0]) if values else ""


# Addresses ----------------------------------------------------------------------------------


def _read_addresses(email: InboundEmail, message: Message, defects: _Defects, hint: str) -> None:
    sender = read_sender(
        _header_texts(message, "from", hint),
        _header_texts(message, "sender", hint),
        reply_to_values=_header_texts(message, "reply-to", hint),
        return_path_values=_header_texts(message, "return-path", hint),
    )
    email.from_name, email.from_address = sender.name, sender.address
    email.sender_fallback, email.from_local_part = sender.fallback, sender.local_part
    email.sender_problem = sender.problem
    for note in sender.notes:
        defects.add(note)
    email.reply_to = _addr_specs(_addresses(message, "reply-to", defects, hint))
    email.to = _addr_specs(_addresses(message, "to", defects, hint))
    email.cc = _addr_specs(_addresses(message, "cc", defects, hint))
    email.delivered_to = _addr_specs(
        _addresses(message, "delivered-to", defects, hint)
        + _addresses(message, "x-original-to", defects, hint)
    )


def _header_texts(part: Message, name: str, hint: str) -> list[str]:
    """Every `name` header's raw value as unfolded text, encoded words left as they are:
    they may only ever make a display name (see from_header.py)."""
    return [_unfold(undo_surrogateescape(raw, hint)[0]) for raw in _raw_values(part, name)]


def _addr_specs(pairs: Iterable[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(address for _, address in pairs))


def _addresses(
    part: Message, name: str, defects: _Defects, hint: str = ""
) -> list[tuple[str, str]]:
    """(display name, lowercased addr-spec) of every address in every `name` header; addresses
    without an @ are dropped, as nobody can answer them."""
    pairs: list[tuple[str, str]] = []
    for raw in _raw_values(part, name):
        value, _ = undo_surrogateescape(raw, hint)
        value = _unfold(value)
        found = _strict_addresses(value)
        if found is None:
            defects.add(f"{name}: read with the lenient address parser")
            found = _lenient_addresses(value)
        for display_name, address in found:
            address = clean_text(address).strip().strip("<>").strip().lower()
            # No white space and no control character: the desk may write it into a header.
            if "@" in address and not any(
                char.isspace() or not char.isprintable() for char in address
            ):
                pairs.append((collapse_whitespace(clean_text(display_name)), address))
            elif address:
                defects.add(f"{name}: address without a domain dropped")
    return pairs


def _strict_addresses(value: str) -> list[tuple[str, str]] | None:
    """The stdlib's RFC 5322 parser: exact, decodes encoded words, knows groups. None when it
    fails: it raises AttributeError on `unlisted-recipients:; (...)`, for one."""
    if len(value) > MAX_STRICT_ADDRESS_CHARS:
        return None
    try:
        # Parsed as a To header whatever its name: Delivered-To is not registered as one.
        header = policy.default.header_factory("to", value)
        found = []
        for address in header.addresses:
            display_name, _ = undo_surrogateescape(address.display_name)
            found.append((display_name, address.addr_spec))
        return found
    except Exception:  # any failure means: read it leniently
        return None


def _lenient_addresses(value: str) -> list[tuple[str, str]]:
    found = []
    for display_name, address in getaddresses([value]):
        found.append((decode_encoded_words(display_name)[0], address))
    return found


# Message ids, subject, date ------------------------------------------------------------------


def _read_message_ids(email: InboundEmail, message: Message, defects: _Defects) -> None:
    values = [_decode_header(raw) for raw in _raw_values(message, "message-id")]
    if values:
        ids = _message_ids(values[0], defects, single=True)
        email.message_id = ids[0] if ids else ""
        if not ids:
            defects.add("Message-ID unreadable")
    email.in_reply_to = _message_ids(_joined(message, "in-reply-to"), defects)
    references = _message_ids(_joined(message, "references"), defects)
    if len(references) > MAX_REFERENCES:
        # The first is the thread's root and the last ones its latest messages.
        references = references[:1] + references[-(MAX_REFERENCES - 1) :]
        defects.add(f"References cut to {MAX_REFERENCES} ids")
    email.references = references


def _joined(part: Message, name: str) -> str:
    return " ".join(_decode_header(raw) for raw in _raw_values(part, name))


def _message_ids(value: str, defects: _Defects, *, single: bool = False) -> list[str]:
    """<id> tokens in order, without repeats. Ids sent without angle brackets get them; in a
    list, only tokens with an @ count then (In-Reply-To often carries prose)."""
    bracketed = _MESSAGE_ID.findall(value)
    candidates = bracketed or value.replace(",", " ").split()
    ids = []
    for candidate in candidates:
        # Without control characters: a reply's References repeat it in a header we write.
        candidate = "".join(without_control_characters(clean_text(candidate)).split())
        if not candidate or (not bracketed and not single and "@" not in candidate):
            continue
        if len(candidate) + 2 > MAX_MESSAGE_ID_CHARS:
            defects.add("a message id longer than 998 characters was ignored")
            continue
        ids.append(f"<{candidate}>")
        if single:
            break
    return list(dict.fromkeys(ids))


def _read_subject(email: InboundEmail, message: Message, defects: _Defects, hint: str) -> None:
    values = _raw_values(message, "subject")
    if not values:
        return
    # On one line and without control characters: it becomes the record's title and the
    # subject of the desk's emails about it, where they could start a header of their own.
    subject = collapse_whitespace(
        without_control_characters(clean_text(_decode_header(values[0], hint=hint)))
    )
    if len(subject) > MAX_SUBJECT_CHARS:
        defects.add(f"subject cut to {MAX_SUBJECT_CHARS} characters")
        subject = subject[:MAX_SUBJECT_CHARS].rstrip()
    email.subject = subject


def _read_date(email: InboundEmail, message: Message, defects: _Defects) -> None:
    values = _raw_values(message, "date")
    if not values:
        defects.add("no Date header")
        return
    value = _decode_header(values[0])
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.add(f"Date unreadable: {value[:100]!r}")
        return
    # "-0000" (and a missing zone) mean the zone is unknown: take UTC, as RFC 5322 suggests.
    email.date = date if date.tzinfo is not None else date.replace(tzinfo=UTC)


def _read_content_type(email: InboundEmail, message: Message) -> None:
    email.content_type = _content_type(message)
    if email.content_type == "multipart/report":
        report_type = message.get_param("report-type", "")
        if isinstance(report_type, tuple):  # an RFC 2231 value
            report_type = report_type[2]
        email.report_type = clean_text(str(report_type)).strip().lower()[:100]


# Body and attachments -------------------------------------------------------------------------


@dataclasses.dataclass
class _Walk:
    deadline: _Deadline
    defects: _Defects
    plain: list[str] = dataclasses.field(default_factory=list)
    html: list[str] = dataclasses.field(default_factory=list)
    attachments: list[ParsedAttachment] = dataclasses.field(default_factory=list)
    parts: int = 0
    stopped: bool = False

    def may_continue(self) -> bool:
        if not self.stopped and self.deadline.passed():
            self.defects.add("time limit: stopped reading MIME parts")
            self.stopped = True
        if not self.stopped and self.parts >= MAX_PARTS:
            self.defects.add(f"more than {MAX_PARTS} MIME parts: the rest were not read")
            self.stopped = True
        return not self.stopped


def _read_body(
    email: InboundEmail,
    message: Message,
    structure_ok: bool,
    deadline: _Deadline,
    defects: _Defects,
) -> None:
    walk = _Walk(deadline=deadline, defects=defects)
    if structure_ok:
        _walk_part(message, walk, depth=0, alternative=None)
    else:
        walk.plain.append(_part_text(message, walk, content_type="text/plain"))
    html = "\n".join(walk.html)
    email.html_body = sanitise_html(html) if html.strip() else ""
    email.text_body = "\n\n".join(text for text in walk.plain if text.strip())
    if not email.text_body and email.html_body:
        email.text_body = html_to_text(email.html_body)
    email.attachments = _mark_referenced_inline(walk.attachments, html)


def _walk_part(part: Message, walk: _Walk, *, depth: int, alternative: set[str] | None) -> None:
    """Sort each part into text body, HTML body or attachment. `alternative` is the set of body
    types already taken from the multipart/alternative being read, if any."""
    if not walk.may_continue():
        return
    walk.parts += 1
    if depth > MAX_MIME_DEPTH:
        walk.defects.add(f"MIME parts nested deeper than {MAX_MIME_DEPTH} were not read")
        return
    for defect in getattr(part, "defects", ()):
        walk.defects.add(f"MIME: {type(defect).__name__}")
    try:
        _read_part(part, walk, depth=depth, alternative=alternative)
    except Exception as error:  # one unreadable part costs that part, not the email
        walk.defects.add(f"MIME part {walk.parts} unreadable: {type(error).__name__}: {error}")


def _read_part(part: Message, walk: _Walk, *, depth: int, alternative: set[str] | None) -> None:
    content_type = _content_type(part)
    if content_type in _FORWARDED_TYPES:
        _add_forwarded(part, walk)
        return
    if part.is_multipart():
        if content_type.startswith("message/"):  # delivery-status and the like: header blocks
            _add_attachment(part, walk, content_type, content=_body_bytes_of(part, walk))
            return
        inner = set() if content_type == "multipart/alternative" else None
        for child in part.get_payload():
            _walk_part(child, walk, depth=depth + 1, alternative=inner)
        return
    if content_type.startswith("multipart/"):
        recovered = _recover_multipart(part, walk)
        if recovered is not None:
            _walk_part(recovered, walk, depth=depth + 1, alternative=alternative)
            return
        walk.defects.add(f"{content_type} without usable boundary: body kept as text")
        content_type = "text/plain"
    _walk_leaf(part, walk, content_type, alternative)


def _walk_leaf(part: Message, walk: _Walk, content_type: str, alternative: set[str] | None) -> None:
    disposition = _disposition(part)
    filename = _filename(part, walk)
    named = bool(filename)
    if content_type in ("text/plain", "text/html") and disposition != "attachment" and not named:
        if alternative is not None:
            if content_type in alternative:
                return  # a second rendering of what was already taken
            alternative.add(content_type)
        text = _part_text(part, walk, content_type=content_type)
        (walk.plain if content_type == "text/plain" else walk.html).append(text)
        return
    if (
        alternative is not None
        and content_type.startswith("text/")
        and content_type != "text/calendar"
        and disposition != "attachment"
        and not named
    ):
        return  # text/enriched, text/watch-html: other renderings of the same text
    _add_attachment(part, walk, content_type, content=_payload_bytes(part), filename=filename)


def _recover_multipart(part: Message, walk: _Walk) -> Message | None:
    """A multipart whose boundary the stdlib did not find (unquoted boundaries with '=' in
    them, say): find the boundary leniently in the header or in the body, and parse again."""
    body = _payload_bytes(part)
    candidates = [
        m.group(1) or m.group(2)
        for m in _BOUNDARY_PARAM.finditer(_first_header(part, "content-type"))
    ]
    first_line = next((line for line in body.splitlines() if line.strip()), b"")
    if first_line.startswith(b"--") and len(first_line.strip()) > 2:
        candidates.append(first_line.strip()[2:].decode("ascii", "replace"))
    for boundary in dict.fromkeys(candidates):
        if '"' in boundary or f"--{boundary}".encode() not in body:
            continue
        header = f'Content-Type: {_content_type(part)}; boundary="{boundary}"\r\n\r\n'.encode()
        recovered = BytesParser(policy=policy.compat32).parsebytes(header + body)
        if recovered.is_multipart():
            walk.defects.add("MIME boundary recovered leniently")
            return recovered
    return None


def _part_text(part: Message, walk: _Walk, *, content_type: str) -> str:
    data = _payload_bytes(part)
    charset = _charset(part)
    if not charset and content_type == "text/html":
        found = _HTML_META_CHARSET.search(data[:4096])
        charset = found.group(1).decode("ascii") if found else ""
    text, note = decode_text(data, charset)
    if note:
        walk.defects.add(f"{content_type}: {note}")
    return clean_text(text.replace("\r\n", "\n").replace("\r", "\n"))


def _add_forwarded(part: Message, walk: _Walk) -> None:
    """A forwarded email stays whole, as a .eml file named after its subject."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload:
        inner = payload[0]
        content = _as_bytes(inner, walk)
        subject = collapse_whitespace(clean_text(_first_header(inner, "subject")))
    else:  # base64 around a message, which the stdlib does not unwrap
        content = _payload_bytes(part)
        subject = ""
    name = _filename(part, walk)
    if not name and subject:
        name = re.sub(r"[\\/:*?\"<>|]+", "-", subject)[:150].strip(" .-") + ".eml"
    _add_attachment(
        part, walk, "message/rfc822", content=content, filename=name or "forwarded-message.eml"
    )


def _add_attachment(
    part: Message, walk: _Walk, content_type: str, *, content: bytes, filename: str = ""
) -> None:
    number = len(walk.attachments) + 1
    name = filename or _filename(part, walk)
    if not name and content_type in _TNEF_TYPES:
        name = "winmail.dat"
    content_id = _first_header(part, "content-id").strip().strip("<>").strip()
    walk.attachments.append(
        ParsedAttachment(
            filename=_safe_filename(name, content_type, number),
            content_type=content_type[:255],
            content=content,
            content_id=clean_text(content_id)[:255],
            # An image shown in the text rather than a file offered for download; also set
            # below for any part the HTML refers to by cid:.
            is_inline=bool(content_id)
            and content_type.startswith("image/")
            and _disposition(part) != "attachment",
        )
    )


def _mark_referenced_inline(
    attachments: list[ParsedAttachment], html: str
) -> list[ParsedAttachment]:
    """Parts the HTML shows through cid: are inline whatever their Content-Disposition says
    (some mailers send them as "attachment")."""
    referenced = {unquote(found).lower() for found in _CID_REFERENCE.findall(html)}
    return [
        dataclasses.replace(attachment, is_inline=True)
        if attachment.content_id and attachment.content_id.lower() in referenced
        else attachment
        for attachment in attachments
    ]


def _safe_filename(name: str, content_type: str, number: int) -> str:
    """A name to store a file under: no directories, no control characters, not hidden, not
    too long; "attachment-3.pdf" when nothing usable is left."""
    name = clean_text(name).replace("\\", "/").rsplit("/", 1)[-1]
    # Controls and format characters go (U+202E would show "gnp.exe" as "exe.png").
    name = "".join(char if char.isprintable() else " " if char.isspace() else "" for char in name)
    name = name.strip().strip(".").strip()
    if not name:
        extension = _EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type)
        name = f"attachment-{number}{extension or '.bin'}"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        extension = extension[:20] if dot and stem else ""
        keep = MAX_FILENAME_CHARS - len(extension) - (1 if extension else 0)
        name = (stem[:keep] + "." + extension) if extension else name[:MAX_FILENAME_CHARS]
    return name


# Reading parts defensively ----------------------------------------------------------------------


def _content_type(part: Message) -> str:
    try:
        return clean_text(part.get_content_type()).lower()
    except Exception:  # fall back to the raw header
        found = re.match(r"\s*([\w.+-]+/[\w.+-]+)", _first_header(part, "content-type"))
        return found.group(1).lower() if found else "text/plain"


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:  # fall back to the raw header
        found = _TOKEN.match(_first_header(part, "content-disposition").lower())
        return found.group() if found else ""


def _charset(part: Message) -> str:
    try:
        return part.get_content_charset() or ""
    except Exception:  # fall back to the raw header
        found = re.search(
            r"""charset\s*=\s*"?([^";\s]+)""", _first_header(part, "content-type"), re.I
        )
        return found.group(1) if found else ""


def _filename(part: Message, walk: _Walk) -> str:
    """The part's file name (Content-Disposition filename, Content-Type name; RFC 2231 and
    encoded words decoded), else the last segment of a Content-Location.

    compat32's parameter parser keeps unquoted names with spaces ("filename=This is a
    test.txt") and encoded words where they do not belong (name==?utf-8?B?...?=), which are
    decoded here; policy.default's is the second opinion."""
    name = ""
    for read in (_compat32_filename, _policy_filename):
        try:
            name = read(part)
        except Exception as error:  # a broken parameter list
            walk.defects.add(f"attachment name unreadable: {type(error).__name__}")
        if name:
            break
    if name:
        name, _ = undo_surrogateescape(name)
        name, _ = decode_encoded_words(collapse_whitespace(name))
        return name
    location = _first_header(part, "content-location")
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] if location else ""


def _compat32_filename(part: Message) -> str:
    legacy = Message(policy=policy.compat32)
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition"):
            # Decoded first: compat32 turns raw 8-bit bytes into U+FFFD when it reads them.
            legacy[name] = undo_surrogateescape(value)[0]
    return legacy.get_filename() or ""


def _policy_filename(part: Message) -> str:
    modern = policy.default.header_factory
    for name, value in part.raw_items():
        if name.lower() == "content-disposition":
            found = modern(name, undo_surrogateescape(value)[0]).params.get("filename")
            if found:
                return str(found)
    for name, value in part.raw_items():
        if name.lower() == "content-type":
            found = modern(name, undo_surrogateescape(value)[0]).params.get("name")
            if found:
                return str(found)
    return ""


def _payload_bytes(part: Message) -> bytes:
    """A leaf part's content, its transfer encoding undone, leniently: the stdlib compares the
    Content-Transfer-Encoding exactly, so "base64;" or "Base64 " come back still encoded.
    (get_payload() without decode=True would turn raw 8-bit bytes into U+FFFD.)"""
    fast = _base64_without_copies(part)
    if fast is not None:
        return fast
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    if str(part.get("content-transfer-encoding", "")).lower() in _STDLIB_DECODES:
        return data
    found = _TOKEN.match(_first_header(part, "content-transfer-encoding").lower())
    encoding = found.group() if found else ""
    if encoding == "base64":
        return decode_base64(data)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


def _base64_without_copies(part: Message) -> bytes | None:
    """A base64 part decoded straight from the parsed text. get_payload(decode=True) first
    encodes the text, splits that into lines and joins them again: with a 20 MB attachment
    that held about five times the attachment at once. None when the text is not plain
    ASCII base64 (8-bit bytes, bad padding): the lenient path decides then."""
    if part.is_multipart():
        return None
    if str(part.get("content-transfer-encoding", "")).strip().lower() != "base64":
        return None
    payload = part.get_payload()
    if not isinstance(payload, str):
        return None
    try:
        return binascii.a2b_base64(payload)
    except ValueError:  # binascii.Error too: non-ASCII characters, or broken padding
        return None


def _as_bytes(message: Message, walk: _Walk) -> bytes:
    """A (sub-)message as bytes, header folding and 8-bit bytes kept as they came."""
    for generator_policy in (
        policy.compat32.clone(max_line_length=0),
        policy.default.clone(refold_source="none"),
    ):
        try:
            return message.as_bytes(policy=generator_policy)
        except Exception as error:  # the generators trip on some broken headers
            walk.defects.add(f"writing out an enclosed message: {type(error).__name__}")
    walk.defects.add("an enclosed message could not be written out; kept empty")
    return b""


def _body_bytes_of(part: Message, walk: _Walk) -> bytes:
    serialised = _as_bytes(part, walk)
    found = _BLANK_LINE.search(serialised)
    return serialised[found.end() :] if found else serialised


# The final guarantee --------------------------------------------------------------------------


def _cleaned(email: InboundEmail) -> InboundEmail:
    """No NUL and no lone surrogate in any text of the result, whichever path produced it."""
    for field in dataclasses.fields(email):
        value = getattr(email, field.name)
        if isinstance(value, str):
            setattr(email, field.name, clean_text(value))
        elif isinstance(value, list):
            setattr(email, field.name, [_cleaned_item(item) for item in value])
        elif isinstance(value, dict):
            setattr(
                email,
                field.name,
                {clean_text(key): [clean_text(v) for v in values] for key, values in value.items()},
            )
    return email


def _cleaned_item(item: object) -> object:
    if isinstance(item, str):
        return clean_text(item)
    if isinstance(item, ParsedAttachment):
        return dataclasses.replace(
            item,
            filename=clean_text(item.filename),
            content_type=clean_text(item.content_type),
            content_id=clean_text(item.content_id),
        )
    return item
