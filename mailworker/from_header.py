"""The one sender identity of an inbound email: whose address From names.

The stdlib's strict RFC 5322 parser reads From first. When it calls the value invalid (it then
returns whatever it could, which for `alice@victim.test <mallory@attacker.test>` is Alice),
the value is read by its structure instead: the address inside the angle brackets is the
sender, and a display name never supplies one, encoded or not. Whatever still leaves more
than one candidate, or a malformed one, is not guessed at: it is returned as a problem, and
the sender identity filter quarantines the email with it. A From with no address at all is
not a problem here: Reply-To, then Sender, then Return-Path stand in for it when one of them
names exactly one address (noted, and which one is kept in `fallback`); without any, the
requester filter decides what an email without a sender may do. A From that only names a
local part (`MAILER-DAEMON (Mail Delivery System)`) gives no address, but its local part is
kept apart (`local_part`) for the filters that recognise bounces: it never opens a record nor
names a user, since nobody can be answered at it.

Works on header values already decoded to text and unfolded (see parsing.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from email import policy
from email.errors import InvalidHeaderDefect

from mailworker.text import clean_text, collapse_whitespace, decode_encoded_words
from servicedesk.control_characters import without_control_characters

# Beyond this the strict parser is too slow (see parsing.py) and nobody's From is this long.
MAX_FROM_CHARS = 20_000
# A host name (Unicode letters allowed, for IDNs) or an address literal: enough to refuse
# what is no domain at all, such as "evil.test?=" left over from a broken encoded word.
_DOMAIN = re.compile(r"(?:[\w-]+\.)*[\w-]+|\[[^\[\]\\\s]+\]")
_SPECIALS_IN_LOCAL_PART = set('<>()[]\\,;:"@')


@dataclass(frozen=True)
class Sender:
    name: str = ""
    address: str = ""  # lowercased addr-spec; "" when there is none or it is ambiguous
    problem: str = ""  # why the sender is ambiguous, for the quarantine; "" when it is not
    notes: tuple[str, ...] = ()  # what was odd, for the email's defects
    fallback: str = ""  # the header that stood in for a From without address: "Reply-To"...
    local_part: str = ""  # lowercased, when From names a local part without a domain only


@dataclass(frozen=True)
class _Reading:
    """What one header value says: its mailboxes (name, address), or why it cannot say."""

    mailboxes: list[tuple[str, str]] = field(default_factory=list)
    problem: str = ""
    note: str = ""


_ADDRESS_IN_NAME = re.compile(r"[^\s<>()\"',;:]+@[^\s<>()\"',;:]+")


# Who stands in for a From without an address, in this order (issue 13).
FALLBACK_ORDER = ("Reply-To", "Sender", "Return-Path")
_LOCAL_PART_ONLY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,63}")


def read_sender(
    from_values: list[str],
    sender_values: list[str],
    reply_to_values: list[str] | None = None,
    return_path_values: list[str] | None = None,
) -> Sender:
    """The sender from every From header's value (and the Sender header's, which names the
    sender among several authors). When From names no address at all (missing, empty, a
    group without members, a local part only), the single address of Reply-To, else Sender,
    else the first Return-Path (the one the final delivery wrote) stands in. Never when From
    is ambiguous: that stays a problem."""
    sender = _read_sender(
        from_values,
        sender_values,
        {
            "Reply-To": reply_to_values or [],
            "Sender": sender_values,
            "Return-Path": (return_path_values or [])[:1],
        },
    )
    if not sender.problem and (not sender.address or sender.fallback):
        sender = replace(sender, local_part=_local_part_only(from_values))
    if sender.name and _names_another_address(sender.name, sender.address):
        # "alice@victim.test <mallory@attacker.test>": shown as the requester's name, the
        # display name would still tell an agent it is Alice. The address is who it is.
        return replace(
            sender, name="", notes=(*sender.notes, "display name names another address; dropped")
        )
    return sender


def _names_another_address(name: str, address: str) -> bool:
    return any(found.lower() != address for found in _ADDRESS_IN_NAME.findall(name))


def _local_part_only(from_values: list[str]) -> str:
    """ "mailer-daemon" for `MAILER-DAEMON (Mail Delivery System)`: the one address of a From
    that has no domain, when it is a plain word."""
    if len(from_values) != 1 or len(from_values[0]) > MAX_FROM_CHARS:
        return ""
    try:
        addresses = policy.default.header_factory("from", from_values[0]).addresses
    except Exception:  # unreadable: no local part either
        return ""
    if len(addresses) != 1 or "@" in addresses[0].addr_spec:
        return ""
    local = addresses[0].addr_spec.strip()
    return local.lower() if _LOCAL_PART_ONLY.fullmatch(local) else ""


def _read_sender(
    from_values: list[str], sender_values: list[str], fallbacks: dict[str, list[str]]
) -> Sender:
    readings = [read_mailboxes(value) for value in from_values]
    notes = tuple(f"From: {reading.note}" for reading in readings if reading.note)
    for reading in readings:
        if reading.problem:
            return Sender(problem=f"From {reading.problem}", notes=notes)
    mailboxes = _distinct([box for reading in readings for box in reading.mailboxes])
    if len(from_values) > 1 and len(mailboxes) > 1:
        listed = ", ".join(address for _, address in mailboxes)
        return Sender(problem=f"{len(from_values)} From headers name {listed}", notes=notes)
    if len(mailboxes) == 1:
        name, address = mailboxes[0]
        return Sender(name=name, address=address, notes=notes)
    if not mailboxes:
        for header in FALLBACK_ORDER:
            found = _single_mailbox(fallbacks[header])
            if found is not None:
                return Sender(
                    name=found[0],
                    address=found[1],
                    notes=(*notes, f"no usable From; used {header}"),
                    fallback=header,
                )
        return Sender(notes=(*notes, "no usable From address"))
    single = _single_mailbox(sender_values)
    # Several authors: RFC 5322 says the Sender header then names who sent it.
    if single is None:
        listed = ", ".join(address for _, address in mailboxes)
        return Sender(
            problem=f"From names {len(mailboxes)} addresses ({listed}) and no single Sender",
            notes=notes,
        )
    names = {address: name for name, address in mailboxes}
    return Sender(
        name=names.get(single[1]) or single[0],
        address=single[1],
        notes=(*notes, "several From addresses; the Sender header names the sender"),
    )


def _single_mailbox(values: list[str]) -> tuple[str, str] | None:
    if len(values) != 1:
        return None
    reading = read_mailboxes(values[0])
    if reading.problem or len(reading.mailboxes) != 1:
        return None
    return reading.mailboxes[0]


def _distinct(mailboxes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for name, address in mailboxes:
        seen.setdefault(address, name)
    return [(name, address) for address, name in seen.items()]


def read_mailboxes(value: str) -> _Reading:
    """The mailboxes of one From (or Sender) value, strictly, else by its structure."""
    if len(value) > MAX_FROM_CHARS:
        return _Reading(problem=f"is longer than {MAX_FROM_CHARS} characters")
    strict = _strict(value)
    if strict is not None:
        bad = [address for _, address in strict if not is_address(address)]
        if bad:
            return _Reading(problem=f"has a malformed address {bad[0]!r}")
        return _Reading(mailboxes=[(clean_name(name), address) for name, address in strict])
    return _by_structure(value)


def _strict(value: str) -> list[tuple[str, str]] | None:
    """The stdlib's reading when it found the value valid (obsolete forms are fine); None
    when it raised or called something in it invalid."""
    try:
        header = policy.default.header_factory("from", value)
        if any(isinstance(defect, InvalidHeaderDefect) for defect in header.defects):
            return None
        return [(box.display_name, box.addr_spec.lower()) for box in header.addresses]
    except Exception:  # it raises on CR/LF in decoded display names, among others
        return None


def _by_structure(value: str) -> _Reading:
    """Angle brackets decide; without them, the one address-like word decides."""
    shape = _Shape.of(value)
    note = "read by its angle brackets, the strict parser refused it"
    if len(shape.brackets) > 1:
        listed = ", ".join(bracket.strip() for bracket in shape.brackets)
        return _Reading(problem=f"has {len(shape.brackets)} addresses in angle brackets ({listed})")
    if shape.brackets:
        address = shape.brackets[0].strip().lower()
        if any(word.strip(",;") for word in shape.after):
            return _Reading(problem=f"has more after its address <{address}>: {_shown(value)}")
        if not is_address(address):
            return _Reading(problem=f"has a malformed address <{address}>")
        return _Reading(mailboxes=[(display_name(shape.before), address)], note=note)
    if shape.unclosed is not None:
        address = shape.unclosed.strip().lower()
        if not is_address(address):
            return _Reading(problem=f"is unreadable: {_shown(value)}")
        return _Reading(mailboxes=[(display_name(shape.before), address)], note=note)
    candidates = list(dict.fromkeys(w.strip(",;").lower() for w in shape.before_words if "@" in w))
    if not candidates:
        return _Reading(note="no address in it")
    if len(candidates) > 1:
        return _Reading(problem=f"has {len(candidates)} addresses ({', '.join(candidates)})")
    if not is_address(candidates[0]):
        return _Reading(problem=f"has a malformed address {candidates[0]!r}")
    return _Reading(mailboxes=[("", candidates[0])], note="read leniently: no angle brackets")


@dataclass
class _Shape:
    """A header value split at its top level: quoted strings and comments are skipped over
    (what they hold is a name or a remark), angle brackets collected."""

    before: str = ""  # the text before the first angle bracket: the display name
    before_words: list[str] = field(default_factory=list)  # its words outside quotes
    brackets: list[str] = field(default_factory=list)  # the contents of each <...>
    unclosed: str | None = None  # what follows a "<" that never closes
    after: list[str] = field(default_factory=list)  # words after the last bracket

    @classmethod
    def of(cls, value: str) -> _Shape:
        shape = cls()
        words: list[str] = []  # words outside quotes and comments, where we are
        word: list[str] = []
        before: list[str] = []
        index, length = 0, len(value)

        def end_word() -> None:
            if word:
                words.append("".join(word))
                word.clear()

        while index < length:
            char = value[index]
            if char == '"':
                end = _closing_quote(value, index)
                if not shape.brackets:
                    before.append(value[index:end])
                index = end
                continue
            if char == "(":
                index = _closing_comment(value, index)
                end_word()
                continue
            if char == "<":
                end_word()
                closing = value.find(">", index + 1)
                if closing < 0:
                    shape.unclosed = value[index + 1 :]
                    break
                if not shape.brackets:
                    shape.before_words = list(words)
                shape.brackets.append(value[index + 1 : closing])
                words.clear()
                index = closing + 1
                continue
            if char.isspace():
                end_word()
            else:
                word.append(char)
            if not shape.brackets:
                before.append(char)
            index += 1
        end_word()
        if shape.brackets:
            shape.after = words
        else:
            shape.before_words = words
        shape.before = "".join(before)
        return shape


def _closing_quote(value: str, start: int) -> int:
    """The index after the quoted string that opens at `start` (backslash escapes)."""
    index = start + 1
    while index < len(value):
        if value[index] == "\\":
            index += 2
            continue
        if value[index] == '"':
            return index + 1
        index += 1
    return len(value)


def _closing_comment(value: str, start: int) -> int:
    """The index after the comment that opens at `start` (nested, backslash escapes)."""
    depth, index = 0, start
    while index < len(value):
        char = value[index]
        if char == "\\":
            index += 2
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        index += 1
        if depth == 0:
            return index
    return len(value)


def _shown(value: str) -> str:
    """A value quoted for a reason an admin reads: escaped, and not a page long."""
    return repr(value if len(value) <= 200 else value[:200] + "…")


def is_address(address: str) -> bool:
    """A usable addr-spec: a local part without specials (unless quoted) and a domain."""
    local, at, domain = address.rpartition("@")
    if not local or not at or not _DOMAIN.fullmatch(domain):
        return False
    if any(char.isspace() or not char.isprintable() for char in address):
        return False
    quoted = len(local) > 1 and local.startswith('"') and local.endswith('"')
    return quoted or not (set(local) & _SPECIALS_IN_LOCAL_PART)


def display_name(text: str) -> str:
    """A display name as people read it: encoded words decoded, quotes undone, and no
    control characters (a CR/LF from an encoded word would break a header we write)."""
    text = text.strip()
    if len(text) > 1 and text.startswith('"') and text.endswith('"'):
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    text, _note = decode_encoded_words(text)
    return clean_name(text)


def clean_name(text: str) -> str:
    return collapse_whitespace(without_control_characters(clean_text(text)))
