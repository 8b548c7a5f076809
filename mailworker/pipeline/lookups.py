"""What every email of a pass looks up the same way, read once a pass instead of once an
email: the desk's own addresses (loop guard), the status new records start in, the email
rules, and the statuses a reply does not move a record out of.

A pass lasts seconds; an admin's change to these is seen by the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Max

from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from mailworker.pipeline.flood_counts import floods_held_in_window, new_records_in_window
from records import write_behind
from records.email_rules import active_email_rules
from records.models import EmailRule, ProcessedEmail, ServiceRecord, Status, User
from records.selectors import existing_records
from records.services import (
    default_new_status,
    find_users_by_email,
    taken_usernames,
    username_for,
)


@dataclass(frozen=True)
class PassLookups:
    desk_addresses: frozenset[str]
    new_status: Status
    email_rules: tuple[EmailRule, ...]
    unless_status_ids: frozenset[int]


def load_pass_lookups(
    *, integration: EmailIntegration, desk_addresses: frozenset[str] | None = None
) -> PassLookups:
    """Read outside any email's transaction: default_new_status() may create the default
    statuses, which must not be rolled back with an email that fails."""
    if desk_addresses is None:
        desk_addresses = frozenset(addresses_read_by_incoming_integrations())
    return PassLookups(
        desk_addresses=desk_addresses,
        new_status=default_new_status(),
        email_rules=tuple(active_email_rules()),
        unless_status_ids=frozenset(integration.unless_status_in.values_list("pk", flat=True)),
    )


@dataclass
class ChunkLookups:
    """What the emails of one chunk (one transaction) look up one by one otherwise: their
    senders' users and the newest marker with each one's duplicate fingerprint, read with
    one query each before the chunk. What an email adds (a new end user, its marker) is
    noted for the emails after it.

    An email that fails rolls back to its savepoint, taking with it what it added: then
    `forget()` turns these look-ups off for the rest of the chunk, which goes back to asking
    the database (correct, only slower, and failures are rare).
    """

    users: dict[str, User] = field(default_factory=dict)  # lowercased address -> user
    addresses: frozenset[str] = frozenset()  # the addresses `users` answers for
    # fingerprint -> the newest marker's id, or the marker itself when the chunk added it
    # (written with the chunk's rows, it may have no id yet: see newest_marker)
    newest_markers: dict[str, int | ProcessedEmail] = field(default_factory=dict)
    fingerprints: frozenset[str] = frozenset()  # the fingerprints `newest_markers` answers for
    # Flood limit: records opened within the hour per flood key ("sender:…", "domain:…"),
    # kept up to date as the chunk opens records, and the keys with an email held already.
    new_records: dict[str, int] = field(default_factory=dict)
    floods_held: set[str] = field(default_factory=set)
    flood_keys: frozenset[str] = frozenset()  # the keys the two above answer for
    # New end users' usernames (their addresses): which were looked up, which are taken.
    usernames_checked: frozenset[str] = frozenset()
    usernames_taken: set[str] = field(default_factory=set)
    # The records the chunk's emails name ("#123", our signed Message-IDs), by number, each
    # one object however many emails name it: what an email changes on it (a status on
    # reply) the next one sees, as it would reading it again.
    records: dict[int, ServiceRecord] = field(default_factory=dict)
    record_numbers: frozenset[int] = frozenset()  # the numbers `records` answers for
    valid: bool = True

    def user(self, address: str) -> tuple[bool, User | None]:
        """(known, user): whether the chunk can answer for this address, and its user."""
        key = address.strip().lower()
        if not self.valid or key not in self.addresses:
            return False, None
        return True, self.users.get(key)

    def note_user(self, user: User) -> None:
        if self.valid:
            self.users[user.email.strip().lower()] = user

    def newest_marker(self, fingerprint: str) -> tuple[bool, int | None]:
        if not self.valid or fingerprint not in self.fingerprints:
            return False, None
        newest = self.newest_markers.get(fingerprint)
        if isinstance(newest, ProcessedEmail):
            if newest.pk is None:  # still with the chunk's pending rows: its id is needed
                write_behind.write_pending()
            newest = newest.pk
        return True, newest

    def note_marker(self, fingerprint: str, marker: ProcessedEmail) -> None:
        if self.valid and fingerprint in self.fingerprints:
            self.newest_markers[fingerprint] = marker

    def free_username(self, address: str) -> str | None:
        """The address as the username of a new end user when the chunk knows it is free
        (then it is taken from now on); None when the chunk cannot tell."""
        base = username_for(address)
        if not self.valid or base not in self.usernames_checked or base in self.usernames_taken:
            return None
        self.usernames_taken.add(base)
        return base

    def new_records_for(self, key: str) -> tuple[bool, int]:
        """(known, records opened within the hour) for a flood key."""
        if not self.valid or key not in self.flood_keys:
            return False, 0
        return True, self.new_records.get(key, 0)

    def note_new_record(self, keys: list[str]) -> None:
        """A record was opened in this chunk: it counts towards these keys from now on."""
        if self.valid:
            for key in keys:
                if key in self.new_records:
                    self.new_records[key] += 1

    def flood_held(self, key: str) -> tuple[bool, bool]:
        """(known, whether an email of this flood is held within the hour already)."""
        if not self.valid or key not in self.flood_keys:
            return False, False
        return True, key in self.floods_held

    def note_flood_held(self, key: str) -> None:
        if self.valid:
            self.floods_held.add(key)

    def records_named(self, numbers: list[int]) -> dict[int, ServiceRecord] | None:
        """existing_records() for these numbers when the chunk read them all, else None."""
        if not self.valid or not self.record_numbers.issuperset(numbers):
            return None
        return {number: self.records[number] for number in numbers if number in self.records}

    def forget(self) -> None:
        self.valid = False
        self.records.clear()
        self.users.clear()
        self.newest_markers.clear()
        self.new_records.clear()
        self.floods_held.clear()


def load_chunk_lookups(
    *,
    senders: list[str],
    fingerprints: list[str],
    flood_keys: frozenset[str] = frozenset(),
    record_numbers: frozenset[int] = frozenset(),
) -> ChunkLookups:
    """Six queries for a chunk's emails, instead of one or two an email each."""
    wanted = frozenset(fingerprint for fingerprint in fingerprints if fingerprint)
    addresses = frozenset(sender.strip().lower() for sender in senders if sender.strip())
    users = find_users_by_email(emails=senders)
    # The usernames the new senders would get: new end users are named by their address.
    new_usernames = frozenset(username_for(address) for address in addresses - users.keys())
    newest = (
        ProcessedEmail.objects.filter(fingerprint__in=wanted)
        .values("fingerprint")
        .annotate(newest=Max("id"))
        .values_list("fingerprint", "newest")
    )
    return ChunkLookups(
        users=users,
        addresses=addresses,
        newest_markers=dict(newest) if wanted else {},
        fingerprints=wanted,
        new_records=new_records_in_window(flood_keys),
        floods_held=floods_held_in_window(flood_keys),
        flood_keys=flood_keys,
        usernames_checked=new_usernames,
        usernames_taken=taken_usernames(new_usernames),
        records=existing_records(numbers=record_numbers) if record_numbers else {},
        record_numbers=record_numbers,
    )
