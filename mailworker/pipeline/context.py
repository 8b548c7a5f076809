"""What the filters see and decide about one email."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from integrations.models import EmailIntegration
from mailworker.inbound import InboundEmail
from records.email_rules import RuleOutcome
from records.models import Original, ServiceRecord

if TYPE_CHECKING:
    from mailworker.pipeline.lookups import ChunkLookups, PassLookups


class Classification(StrEnum):
    PERSON = "person"
    AUTO_REPLY = "auto-reply"  # out-of-office, vacation: ignored without a record
    AUTO_GENERATED = "auto-generated"  # monitoring, printers: opens a record, never answered
    BULK = "bulk"  # mailing lists, bulk: the integration's bulk_mail_policy
    BOUNCE = "bounce"


@dataclass(frozen=True)
class Verdict:
    """A filter's answer: go on, ignore the email, or quarantine it, with the reason."""

    # "continue" | "ignore" | "duplicate" | "loop" | "bounce" | "quarantine"; what each
    # becomes in the incoming email log: process.VERDICT_OUTCOMES.
    action: str
    reason: str = ""

    @property
    def stops(self) -> bool:
        return self.action != "continue"


CONTINUE = Verdict("continue")


def ignore(reason: str) -> Verdict:
    return Verdict("ignore", reason)


def duplicate(reason: str) -> Verdict:
    return Verdict("duplicate", reason)


def loop(reason: str) -> Verdict:
    """Our own mail coming back: dropped like an ignored email, logged as the loop guard's."""
    return Verdict("loop", reason)


def quarantine(reason: str) -> Verdict:
    return Verdict("quarantine", reason)


def bounce(reason: str) -> Verdict:
    """A bounce of one of the desk's own emails, recorded on that outbox email."""
    return Verdict("bounce", reason)


@dataclass
class EmailContext:
    integration: EmailIntegration
    email: InboundEmail
    raw: bytes
    classification: Classification = Classification.PERSON
    classification_reason: str = ""
    record: ServiceRecord | None = None
    matched_by: str = ""  # how the record was found: "thread", "subject", "body"
    fingerprint: str = ""  # sender + subject + body, for the duplicate guard
    # Every address an incoming integration reads (for the loop guard), computed once a pass.
    desk_addresses: frozenset[str] = frozenset()
    # Statuses, email rules and the like, read once a pass (see lookups.py).
    lookups: PassLookups | None = None
    # The users and markers this email's chunk read at once (see lookups.py).
    chunk: ChunkLookups | None = None
    notes: list[str] = field(default_factory=list)
    # Trust (filters/sender_identity.py, authentication.py, participants.py, flood.py):
    # True or False when a trusted receiving server said whether the sender passed DMARC;
    # None when nothing trusted said anything.
    sender_verified: bool | None = None
    authentication: str = ""  # the trusted Authentication-Results, summarised for the record
    # True when the email names a record but its sender is not on it and the integration's
    # policy keeps it as an internal note: logged for staff, nothing changes, nobody is told.
    as_internal_note: bool = False
    # The flood limit's key ("sender:a@b.test", "domain:b.test") when the email is held.
    flood_key: str = ""
    # What the email rules decided, evaluated before the write transaction (process.py);
    # None: not evaluated yet, open_record evaluates them itself.
    rule_outcome: RuleOutcome | None = None
    # An admin released this email from a flood's quarantine: the flood limit does not hold
    # it again, and its sender gets no acknowledgement (it may be a forged address).
    flood_released: bool = False
    # An admin chose "create a record anyway" for this quarantined email: the filters that
    # quarantine go on instead (filters.run_filters), so it opens a record (or joins the one
    # it names) unless it is ignored outright.
    create_anyway: bool = False
    # The email as it arrived (records/originals.py), and what the parser noted or a limit
    # cut, in words for the record page ("3 attachments not shown: see the original").
    original: Original | None = None
    defects: list[str] = field(default_factory=list)

    @property
    def is_automatic(self) -> bool:
        return self.classification is not Classification.PERSON
