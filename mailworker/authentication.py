"""What the receiving mail server said about the sender: its Authentication-Results header
(RFC 8601), read with the `authres` library, believed only from a server the integration
trusts, and turned into one answer about the From address: verified, failed, or unknown.

Which header is believed (the rule; see README's Security model):

Every server a message passes prepends its trace headers, so the top of the header block is
the newest. The sender wrote everything below the receiving server's own headers, and may
have written Authentication-Results headers there, even ones carrying the trusted server's
authserv-id (RFC 8601 section 5 asks the server to remove or rename those; not every server
does). So, reading the header fields from the top:

1. The first Authentication-Results whose authserv-id is trusted is the only one believed.
   Any below it, whatever they say and whoever they claim to be from, are ignored: the
   trusted server's own stamp sits above anything the sender wrote.
2. Headers with another authserv-id are another server's words (or the sender's): skipped.
3. Below the trusted server's own Received header (its "by" host is the trusted id or a
   host of its domain), the search stops at the first Received header of a foreign host:
   what lies below it was written before the trusted server had the message, so a
   "trusted" stamp there is the sender's forgery. Foreign hosts above the trusted server's
   Received are later hops (the mailbox server it delivered to) and do not stop it; hops
   named by an address only (Gmail's internal "by 2002:a05:...") count for neither.
4. The search also stops at an Authentication-Results that does not parse: it may be the
   trusted server's own, and believing one below it could mean believing the sender.

The premise is that the trusted server stamps every message it receives. A sender who
talks to that server directly and writes a forged stamp at the very top of their own
headers is indistinguishable from the server's stamp when the server wrote none; that is
why only a server that always stamps (a hosted mailbox, an MX running a DMARC filter)
belongs in the list.

Exchange Online (Microsoft 365) writes its Authentication-Results without an authserv-id,
starting straight at "spf=pass ...". The id `mx.microsoft.com` (the one Microsoft writes in
its ARC-Authentication-Results) therefore stands for Exchange Online here: when trusted, an
Authentication-Results with no authserv-id is read as Exchange Online's, under the same
rules. ARC-Authentication-Results are not read: they are what a server saw for the next
hop, and believing them needs the ARC chain verified.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import Enum

import authres
import authres.dmarc

from integrations.services import EXCHANGE_ONLINE_AUTHSERV_ID
from mailworker.text import clean_text

logger = logging.getLogger(__name__)

# The dmarc module adds DMARC's result class (header.from, policy.dmarc) to the core ones.
_FEATURES = authres.FeatureContext(authres.dmarc)

# Hosts Exchange Online's own Received headers name.
_EXCHANGE_ONLINE_DOMAINS = ("outlook.com", "office365.com", "microsoft.com")

# Where the header block ends: the first empty line.
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_COMMENT = re.compile(r"\([^()]*\)")
_BY_HOST = re.compile(r"(?:^|\s)by\s+([^\s;]+)", re.IGNORECASE)
# A value that opens with "method=result" has no authserv-id (Exchange Online's form).
_NO_AUTHSERV_ID = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9_.-]*\s*=")
_ADDRESS_LITERAL = re.compile(
    r"^\[?(?:\d{1,3}(?:\.\d{1,3}){3}|(?:ipv6:)?[0-9a-f.]*:[0-9a-f:.]*)\]?$", re.IGNORECASE
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")

MAX_SUMMARY = 500


@dataclass(frozen=True)
class SenderAuthentication:
    """The answer about one email's sender.

    verified: True when the trusted server's DMARC passed for the From address's domain;
    False when it failed, or passed only for another domain; None when nothing trusted said
    anything about DMARC, or said none (the domain publishes no policy), temperror or
    permerror (the result could not be had): not verified, but not a failure either.
    """

    verified: bool | None = None
    summary: str = ""  # e.g. "dmarc=fail header.from=victim.test (mx.example.com)"
    notes: tuple[str, ...] = ()


@dataclass
class _Stamp:
    authserv_id: str
    header: authres.AuthenticationResultsHeader
    notes: list[str] = field(default_factory=list)


def authenticate_sender(
    *, raw: bytes, from_address: str, trusted_ids: Iterable[str]
) -> SenderAuthentication:
    """What the trusted receiving server said about the sender of `raw`, whose sender
    (the one identity, from the From header) is `from_address`."""
    trusted = normalised_ids(trusted_ids)
    if not trusted:
        return SenderAuthentication()
    notes: list[str] = []
    stamp = trusted_stamp(trace_fields(raw), trusted=trusted, notes=notes)
    if stamp is None:
        return SenderAuthentication(notes=tuple(notes))
    verified, summary = dmarc_verdict(stamp, from_domain=domain_of(from_address))
    return SenderAuthentication(verified, printable(summary), tuple(notes + stamp.notes))


def printable(summary: str) -> str:
    """The summary as the record shows it: the server quotes what the sender wrote (the
    From domain), so no control character and nothing a database refuses."""
    return _CONTROL.sub(" ", clean_text(summary)).strip()[:MAX_SUMMARY]


def normalised_ids(ids: Iterable[str]) -> frozenset[str]:
    return frozenset(str(each).strip().lower() for each in ids if str(each).strip())


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower() if "@" in address else ""


def trace_fields(raw: bytes) -> list[tuple[str, str]]:
    """The Received and Authentication-Results fields of the top-level header block, in
    order, unfolded. Parsed apart from the rest: the order between different header names
    is what matters here, and the parsed email keeps only each name's values."""
    end = _END_OF_HEADERS.search(raw)
    block = raw[: end.start() + 2] if end else raw
    message = BytesHeaderParser(policy=compat32).parsebytes(block)
    fields = []
    for name, value in message.items():
        key = name.strip().lower()
        if key in ("received", "authentication-results"):
            fields.append((key, _FOLD.sub("", str(value)).strip()))
    return fields


def trusted_stamp(
    fields: list[tuple[str, str]], *, trusted: frozenset[str], notes: list[str]
) -> _Stamp | None:
    """The one Authentication-Results believed, by the rule in this module's docstring."""
    passed_trusted_received = False
    for name, value in fields:
        if name == "received":
            side = host_side(received_by(value), trusted=trusted)
            if side is HostSide.TRUSTED:
                passed_trusted_received = True
            elif side is HostSide.FOREIGN and passed_trusted_received:
                return None  # the sender's own trace from here down
            continue
        if _NO_AUTHSERV_ID.match(value):
            if EXCHANGE_ONLINE_AUTHSERV_ID in trusted:
                return exchange_online_stamp(value, notes=notes)
            continue  # no authserv-id, and Exchange Online is not trusted: not ours
        try:
            header = _FEATURES.parse_value(value)
        except Exception as exc:  # noqa: BLE001 - authres raises several kinds; none is fatal
            notes.append(f"Authentication-Results not readable ({exc}); nothing below it used")
            logger.info("unreadable Authentication-Results %r: %s", value[:200], exc)
            return None
        if header.authserv_id in trusted:
            return _Stamp(header.authserv_id, header)
    return None


def exchange_online_stamp(value: str, *, notes: list[str]) -> _Stamp | None:
    """Exchange Online's stamp, read as if it carried the authserv-id mx.microsoft.com.

    It sometimes also puts the receiving domain between results ("smtp.mailfrom=a.test;
    b.test; dkim=pass ..."), which no RFC 8601 parser accepts: then each "method=result"
    clause is read on its own and the stray names are left out.
    """
    prefix = f"{EXCHANGE_ONLINE_AUTHSERV_ID}; "
    try:
        header = _FEATURES.parse_value(prefix + value)
        return _Stamp(EXCHANGE_ONLINE_AUTHSERV_ID, header)
    except Exception:  # noqa: BLE001, S110 - read clause by clause below
        pass
    header = _FEATURES.header(authserv_id=EXCHANGE_ONLINE_AUTHSERV_ID)
    stamp = _Stamp(EXCHANGE_ONLINE_AUTHSERV_ID, header)
    for clause in value.split(";"):
        if "=" not in clause:
            continue
        try:
            header.results.extend(_FEATURES.parse_value(prefix + clause).results)
        except Exception as exc:  # noqa: BLE001 - a clause that does not parse is left out
            stamp.notes.append(f"Exchange Online result not readable: {clause.strip()[:80]!r}")
            logger.info("unreadable Exchange Online clause %r: %s", clause[:200], exc)
    return stamp


def received_by(value: str) -> str:
    """The host a Received header says received the message ("by host"), lowercased; ""
    when it names none."""
    text = value.rpartition(";")[0] or value  # the date follows the last ";"
    while _COMMENT.search(text):
        text = _COMMENT.sub(" ", text)
    found = _BY_HOST.search(text)
    return found.group(1).strip().rstrip(".").lower() if found else ""


class HostSide(Enum):
    TRUSTED = "trusted"  # the trusted server, a host of its domain, Exchange Online's hosts
    FOREIGN = "foreign"  # any other named host
    UNKNOWN = "unknown"  # no host, an address literal, a name without a dot


def host_side(host: str, *, trusted: frozenset[str]) -> HostSide:
    """Whose host a Received header's "by" names. A host of the trusted id's domain counts
    as the trusted server's (mx.example.com: *.example.com), as do Exchange Online's hosts
    when it is trusted."""
    if not host or "." not in host or _ADDRESS_LITERAL.match(host):
        return HostSide.UNKNOWN
    domains = set()
    for authserv_id in trusted:
        labels = authserv_id.split(".")
        domains.add(".".join(labels[1:]) if len(labels) > 2 else authserv_id)
        if authserv_id == EXCHANGE_ONLINE_AUTHSERV_ID:
            domains.update(_EXCHANGE_ONLINE_DOMAINS)
    if host in trusted or any(host == d or host.endswith("." + d) for d in domains):
        return HostSide.TRUSTED
    return HostSide.FOREIGN


def dmarc_verdict(stamp: _Stamp, *, from_domain: str) -> tuple[bool | None, str]:
    """The trusted stamp's DMARC result for the sender's domain, and a summary.

    One identity: header.from must be the From address's domain. A pass for another domain
    does not verify this sender (the server read another From than the desk did), so it
    counts as not verified (False), as does any fail.
    """
    results = [r for r in stamp.header.results if (r.method or "").lower() == "dmarc"]
    where = f"({stamp.authserv_id})"
    if not results:
        return None, f"no DMARC result {where}"
    clauses = []
    verdict: bool | None = None
    for result in results:
        outcome = (result.result or "").lower()
        header_from = _header_from(result)
        clauses.append(f"dmarc={outcome} header.from={header_from or '?'}")
        if outcome == "fail":
            verdict = False
        elif outcome == "pass" and verdict is not False:
            verdict = bool(from_domain) and header_from == from_domain
    summary = "; ".join(clauses) + f" {where}"
    if verdict is False and all("dmarc=pass" in clause for clause in clauses):
        summary += f"; the sender's domain is {from_domain or 'unknown'}"
    return verdict, summary


def _header_from(result: authres.AuthenticationResult) -> str:
    for prop in result.properties:
        if (prop.type or "").lower() == "header" and (prop.name or "").lower() == "from":
            return str(prop.value or "").strip().strip('"').lower()
    return ""
