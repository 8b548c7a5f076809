"""What every email of a pass looks up the same way, read once a pass instead of once an
email: the desk's own addresses (loop guard), the status new records start in, the email
rules, and the statuses a reply does not move a record out of.

A pass lasts seconds; an admin's change to these is seen by the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from records.email_rules import active_email_rules
from records.models import EmailRule, Status
from records.services import default_new_status


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
