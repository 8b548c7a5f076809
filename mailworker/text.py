"""Text helpers for inbound email: charset decoding that never gives up, RFC 2047 encoded
words, text that any database accepts, HTML to plain text, and emoji removal."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from html.parser import HTMLParser

import emoji
import regex
from charset_normalizer import from_bytes

# Labels that mail clients write and Python does not know, or knows as a narrower charset than
# the one senders really use. The supersets follow the WHATWG Encoding Standard, which browsers
# (and so the mail clients built on them) apply to the same labels.
_CHARSET_ALIASES = {
    "uft-8": "utf-8",
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "us-ascii": "windows-1252",
    "ascii": "windows-1252",
    "ansi_x3.4-1968": "windows-1252",
    "iso-8859-1": "windows-1252",
    "iso8859-1": "windows-1252",
    "iso_8859-1": "windows-1252",
    "latin1": "windows-1252",
    "latin-1": "windows-1252",
    "iso-8859-9": "windows-1254",
    "latin5": "windows-1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "euc-cn": "gb18030",
    "big5": "big5hkscs",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "windows-949": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "unicode-1-1-utf-7": "utf-7",
    "utf7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
}
# Labels that say "we don't know": decode by looking at the bytes.
_UNKNOWN_CHARSETS = {"", "x-unknown", "unknown", "unknown-8bit", "x-user-defined", "default"}
# Declared charsets that are really "whatever the client had": text labelled so that is valid
# UTF-8 with non-ASCII characters is UTF-8 (real Latin-1 prose never forms UTF-8 sequences).
_DEFAULT_CHARSETS = {"cp1252"}  # codecs.lookup("windows-1252").name

_SURROGATE = re.compile("[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]")
_C1_CONTROL = re.compile("[\x80-\x9f]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/]")


def _windows_1252_gaps(error: UnicodeError) -> tuple[str, int]:
    # windows-1252 leaves five bytes undefined; browsers map them to the C1 controls (Latin-1).
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("servicedesk-latin1", _windows_1252_gaps)


def clean_text(value: str) -> str:
    """Drop what databases refuse: NUL characters and lone surrogates (UTF-16 pairs that
    arrived split are joined into the character they stand for)."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if _SURROGATE.search(value):
        value = _SURROGATE.sub(_join_surrogate_pair, value)
    return value


def _join_surrogate_pair(match: re.Match[str]) -> str:
    pair = match.group()
    if len(pair) == 2:
        return pair.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    return ""


def collapse_whitespace(value: str) -> str:
    return " ".join(value.split())


def normalise_charset(label: str | None) -> str:
    """'"UTF-8*en"' -> 'utf-8': lowercased, unquoted, without an RFC 2231 language."""
    if not label:
        return ""
    return label.strip().strip("\"'").split("*", 1)[0].strip().lower()


def codec_for(label: str) -> str | None:
    """The Python codec to decode a declared charset with, or None when it is unknown."""
    if label in _UNKNOWN_CHARSETS:
        return None
    name = _CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


# What charset-normalizer may choose from for 8-bit bytes without a declared charset: the
# multi-byte and Cyrillic charsets mail really uses, and windows-1252 to compete with them.
# Left open (or given the other single-byte code pages) it reads French in windows-1250.
_DETECTABLE = ["gb18030", "big5hkscs", "cp932", "euc_jp", "cp949", "koi8_r", "cp1251", "cp1252"]
# Detection reads this much at most: a 20 MB body costs no more than its start.
MAX_DETECTION_BYTES = 64 * 1024
# Below this many non-ASCII bytes a detection is a guess on too little: windows-1252 then.
_MIN_DETECTION_BYTES = 4
_HIGH_BYTES = bytes(range(0x80, 0x100))


def guess_decode(data: bytes, hint: str | None = None) -> tuple[str, str]:
    """Bytes of unknown charset (raw 8-bit headers): the hinted charset (the body's declared
    one) when it is a specific one and the bytes are valid in it, else UTF-8 when they are
    (mostly) UTF-8, else what charset-normalizer detects, else windows-1252. Returns the text
    and the charset used."""
    if data.isascii():
        return data.decode("ascii"), "ascii"
    label = normalise_charset(hint)
    codec = codec_for(label)
    if codec is not None and codec not in ("utf-8", "cp1252", "ascii"):
        try:
            return data.decode(codec), label
        except UnicodeDecodeError:
            pass
    try:
        return _utf8(data), "utf-8"
    except UnicodeDecodeError:
        pass
    text = _mostly_utf8(data)
    if text is not None:
        return text, "utf-8"
    detected = detect_charset(data)
    if detected:
        try:
            return data.decode(detected), detected
        except UnicodeDecodeError:
            pass
    return data.decode("windows-1252", "servicedesk-latin1"), "windows-1252"


def detect_charset(data: bytes) -> str:
    """The charset charset-normalizer finds for legacy 8-bit bytes, among those mail uses;
    "" when there is too little to tell or nothing fits."""
    sample = data[:MAX_DETECTION_BYTES]
    if len(sample) - len(sample.translate(None, _HIGH_BYTES)) < _MIN_DETECTION_BYTES:
        return ""
    try:
        best = from_bytes(sample, cp_isolation=_DETECTABLE).best()
    except Exception:  # a detector failure is no reason to lose the header
        return ""
    if best is None or best.encoding in ("ascii", "utf_8", "cp1252"):
        return ""
    return str(best.encoding)


def decode_text(data: bytes, charset: str | None) -> tuple[str, str]:
    """Decode text bytes as declared where that works, else by the best fallback. Returns the
    text and a note for the defects ("" when the declared charset decoded cleanly)."""
    label = normalise_charset(charset)
    codec = codec_for(label)
    if codec is None:
        text, used = guess_decode(data)
        note = f"unknown charset {label!r}; decoded as {used}" if label not in ("", used) else ""
        return text.removeprefix("\ufeff"), note
    if codec in _DEFAULT_CHARSETS and not data.isascii():
        text = _strict_utf8(data)
        if text is not None:
            return text, f"{label} text was UTF-8"
        return data.decode(codec, "servicedesk-latin1"), ""
    try:
        text = _utf8(data) if codec == "utf-8" else data.decode(codec)
        return text.removeprefix("\ufeff"), _misspelling_note(label, codec)
    except UnicodeDecodeError:
        pass
    if codec == "utf-8":
        return _broken_utf8(data)
    try:
        return _utf8(data).removeprefix("\ufeff"), f"{label} text was UTF-8"
    except UnicodeDecodeError:
        return data.decode(codec, "replace"), f"invalid {label} bytes replaced"


def _misspelling_note(label: str, codec: str) -> str:
    try:
        codecs.lookup(label)
    except LookupError:
        return f"charset {label!r} read as {codec}"
    return ""


def _utf8(data: bytes) -> str:
    """Strict UTF-8, except that encoded surrogates are accepted: Java's and JavaScript's
    encoders write them (CESU-8, or half an emoji cut off). Pairs become the character they
    stand for, lone ones go; see clean_text."""
    return clean_text(data.decode("utf-8", "surrogatepass"))


def _strict_utf8(data: bytes) -> str | None:
    """The text if the bytes are UTF-8 that reads like text: C1 controls mean they are
    something else (often text that was already converted twice) and decode no better."""
    try:
        text = _utf8(data).removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    return None if _C1_CONTROL.search(text) else text


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 with a few damaged bytes (a name cut in the middle of a character) decodes with
    those replaced; legacy text (b"caf\xe9") is not UTF-8 at all. Count which explanation
    covers more of the non-ASCII characters."""
    text = data.decode("utf-8", "replace")
    damaged = text.count("\ufffd") - data.count("\ufffd".encode())
    intact = sum(1 for char in text if char > "\x7f") - text.count("\ufffd")
    return text.removeprefix("\ufeff") if intact > damaged else None


def _broken_utf8(data: bytes) -> tuple[str, str]:
    text = _mostly_utf8(data)
    if text is not None:
        return text, "invalid utf-8 bytes replaced"
    legacy = data.decode("windows-1252", "servicedesk-latin1")
    return legacy, "utf-8 text was not UTF-8; decoded as windows-1252"


def undo_surrogateescape(value: str, hint: str | None = None) -> tuple[str, str]:
    """The stdlib keeps undecodable header bytes as surrogates (surrogateescape); turn them
    back into bytes and decode those properly. Returns the text and a note."""
    if not _ESCAPED_BYTE.search(value):
        return value, ""
    data = value.encode("utf-8", "surrogateescape")
    text, used = guess_decode(data, hint)
    return text, ("" if used == "utf-8" else f"8-bit header decoded as {used}")


def decode_encoded_words(value: str) -> tuple[str, str]:
    """Decode RFC 2047 encoded words ("=?utf-8?q?caf=C3=A9?="), also where they break the
    rules: inside quotes, not separated by spaces, in unknown charsets, or splitting one
    multibyte character over two words. Returns the text and a note."""
    if "=?" not in value:
        return value, ""
    pieces: list[str | tuple[str, bytes]] = []
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        position = match.end()
        charset = normalise_charset(match.group(1))
        data = _decode_word(match.group(2).lower(), match.group(3))
        if data is None:
            pieces.extend([between, match.group()])
            continue
        if between and not (between.isspace() and pieces and isinstance(pieces[-1], tuple)):
            pieces.append(between)
        previous = pieces[-1] if pieces else None
        if isinstance(previous, tuple) and previous[0] == charset:
            pieces[-1] = (charset, previous[1] + data)
        else:
            pieces.append((charset, data))
    pieces.append(value[position:])
    notes = []
    words = []
    for piece in pieces:
        if isinstance(piece, str):
            words.append(piece)
            continue
        text, note = decode_text(piece[1], piece[0])
        words.append(text)
        if note:
            notes.append(note)
    return "".join(words), "; ".join(dict.fromkeys(notes))


def _decode_word(encoding: str, text: str) -> bytes | None:
    data = text.encode("utf-8")
    if encoding == "q":
        return binascii.a2b_qp(data, header=True)
    return decode_base64(data) or None


def decode_base64(data: bytes) -> bytes:
    """Base64 as mailers really write it: stray characters, missing or inner padding."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    cleaned = _BASE64_NOISE.sub(b"", data)
    cleaned = cleaned[: len(cleaned) - len(cleaned) % 4 if len(cleaned) % 4 == 1 else None]
    try:
        return base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4))
    except binascii.Error:
        return b""


# Tags after which the text continues on a new line.
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "caption", "center", "dd", "details", "div",
    "dl", "dt", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul",
}  # fmt: skip


class _TextExtractor(HTMLParser):
    """Text of an HTML body, with its line breaks, list items and link text.

    The stdlib parser is enough here: we want text, not layout, so html2text or BeautifulSoup
    would be a dependency for nothing. It reads nh3's output, which is well-formed, so the
    slow paths html.parser has on broken markup never apply."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.preformatted = 0

    def _at_line_start(self) -> bool:
        return not self.chunks or self.chunks[-1].endswith("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.chunks.append("\n")
        elif tag == "li":
            self.chunks.append("- " if self._at_line_start() else "\n- ")
        elif tag in ("td", "th") and not self._at_line_start():
            self.chunks.append(" ")
        elif tag in _BLOCK_TAGS:
            self.chunks.append("\n")
        if tag == "pre":
            self.preformatted += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS or tag == "li":
            self.chunks.append("\n\n" if tag == "p" else "\n")
        if tag == "pre":
            self.preformatted = max(0, self.preformatted - 1)

    def handle_data(self, data: str) -> None:
        if not self.preformatted:
            data = re.sub(r"\s+", " ", data)
            if self._at_line_start():
                data = data.lstrip()
        if data:
            self.chunks.append(data)

    def text(self) -> str:
        lines = [line.rstrip() for line in "".join(self.chunks).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def html_to_text(html: str) -> str:
    """Plain text of (already sanitised) HTML."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return extractor.text()


_EMOJI_MARK = "\x00"
_VS16 = "\ufe0f"
_EMOJI_PRESENTATION = regex.compile(r"\p{Emoji_Presentation}")
# Characters that make a sequence emoji whatever its first character: a zero-width joiner, a
# skin tone, a keycap, a regional indicator (flags), a tag (subdivision flags).
_EMOJI_SEQUENCE_PART = regex.compile(
    r"[\u200d\u20e3\U0001f3fb-\U0001f3ff\U0001f1e6-\U0001f1ff\U000e0020-\U000e007f]"
)
# No space is left before these when the emoji before them goes ("won't boot 😡." ->
# "won't boot."), nor after the opening ones.
_CLOSING = set(".,;:!?)]}»”’…。，、！？：；）」』")
_OPENING = set("([{«“‘（「『")


def is_emoji_presentation(sequence: str) -> bool:
    """Whether an emoji the emoji package found shows as an emoji: a character with Unicode's
    Emoji_Presentation, or any sequence (VS16, ZWJ, skin tone, keycap, flag). ©, ®, ™, ☎ and
    ❤ alone are text symbols (Emoji_Presentation=No) and stay."""
    if _VS16 in sequence or _EMOJI_SEQUENCE_PART.search(sequence):
        return True
    return bool(_EMOJI_PRESENTATION.match(sequence))


def remove_emojis(text: str) -> str:
    """Remove emoji (ZWJ sequences, flags, skin tones and keycaps as wholes, symbols made
    emoji by VS16) and the spaces they leave behind: "Printer 🔥 broken 👍🏽" -> "Printer
    broken", "won't boot 😡." -> "won't boot.". Text symbols such as ©, ®, ™, ☎ or ✓ stay
    (the emoji package's data counts them as emoji; Unicode shows them as text unless VS16
    follows). Line breaks and other spacing stay."""
    text = text.replace(_EMOJI_MARK, "")
    if text.isascii():
        return text  # every emoji has a code point above U+007F (keycaps end in U+20E3)
    # Rebuilt from the matches' positions: replace_emoji also drops a VS15 (U+FE0E) that
    # follows a text symbol it keeps.
    pieces, position = [], 0
    for found in emoji.emoji_list(text):
        start, end = found["match_start"], found["match_end"]
        if is_emoji_presentation(text[start:end]):
            pieces += [text[position:start], _EMOJI_MARK]
            position = end
    if not position:
        return text
    marked = "".join(pieces) + text[position:]
    return re.sub(r"[ \t]*\x00(?:[ \t]*\x00)*[ \t]*", _close_gap, marked)


def _close_gap(match: re.Match[str]) -> str:
    # A run of emoji with the spaces around it: at a line's start keep its indent, at a line's
    # end drop it, between words leave one space (or none, when the emoji touched a word or
    # punctuation follows).
    text, start, end = match.string, match.start(), match.end()
    gap = match.group()
    if start == 0 or text[start - 1] == "\n":
        return gap[: len(gap) - len(gap.lstrip(" \t"))]
    if end == len(text) or text[end] == "\n":
        return ""
    if text[end] in _CLOSING or text[start - 1] in _OPENING:
        return ""
    return " " if gap[0] in " \t" or gap[-1] in " \t" else ""
