"""What the flood limit counts: new records per sender address and per sender domain within
the last hour, and which floods already have an email held (their admins were alerted).

A flood key names what is counted: "sender:a@b.test" or "domain:b.test". The same keys mark
the held emails in the quarantine (Quarantine.flood_key), so a flood is released as one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Lower
from django.utils import timezone

from mailworker.models import UnalertedFlood
from records.models import Quarantine, ServiceRecord

WINDOW = timedelta(hours=1)
SENDER, DOMAIN = "sender:", "domain:"

# Public webmail: thousands of unrelated people share these domains, so a limit per domain
# would let one attacker on gmail.com hold every other gmail.com user's email. Their senders
# are still limited one address at a time.
PUBLIC_MAIL_DOMAINS = frozenset(
    {
        "aol.com",
        "gmail.com",
        "googlemail.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "hotmail.com",
        "icloud.com",
        "live.com",
        "mac.com",
        "mail.com",
        "mail.ru",
        "me.com",
        "msn.com",
        "outlook.com",
        "proton.me",
        "protonmail.com",
        "qq.com",
        "t-online.de",
        "web.de",
        "yahoo.com",
        "yandex.ru",
        "zoho.com",
    }
)


def window_start() -> datetime:
    return timezone.now() - WINDOW


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower()


def exempt_domains(desk_addresses: Collection[str]) -> frozenset[str]:
    """Domains the limit per domain never holds: public webmail, the domains of the desk's
    own mailboxes (the company's staff write to their desk all day) and the admin's list."""
    own = {domain_of(address) for address in desk_addresses if "@" in address}
    return PUBLIC_MAIL_DOMAINS | own | frozenset(settings.FLOOD_EXEMPT_DOMAINS)


def flood_keys(address: str, *, exempt: Collection[str]) -> list[str]:
    """The counters a new record from this sender adds to, the sender's first. `exempt`:
    the domains whose limit does not apply (exempt_domains())."""
    address = address.strip().lower()
    if not address or address in settings.FLOOD_EXEMPT_SENDERS:
        return []
    keys = [SENDER + address]
    domain = domain_of(address)
    if "@" in address and domain and domain not in exempt:
        keys.append(DOMAIN + domain)
    return keys


def keys_counting(address: str) -> list[str]:
    """Every key a record of this requester counts towards, exempt or not."""
    address = address.strip().lower()
    return [SENDER + address, DOMAIN + domain_of(address)] if address else []


def limit_of(key: str) -> int:
    """The hourly limit for a key; 0 turns that limit off."""
    if key.startswith(SENDER):
        return settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR
    return settings.FLOOD_RECORDS_PER_DOMAIN_PER_HOUR


def source_of(key: str) -> str:
    """What a flood came from, as admins read it: the address or the domain."""
    return key.partition(":")[2]


def records_in_window() -> QuerySet[ServiceRecord]:
    """The records opened within the hour, found without an index on created_at: record
    numbers grow with time, so the newest record older than the window, read by walking the
    numbers down from the newest (only the hour's records are passed), bounds them; a
    range of numbers is then an index search however large the table grows."""
    since = window_start()
    older = ServiceRecord.objects.filter(created_at__lt=since).order_by("-pk").values("pk")[:1]
    return ServiceRecord.objects.filter(
        pk__gt=Coalesce(Subquery(older), Value(0)), created_at__gte=since
    )


def new_records_in_window(keys: Iterable[str]) -> dict[str, int]:
    """Records opened within the hour for each key, with one query for all of them.

    Records beyond a limit are never created (they wait in the quarantine), so each count
    stays about the limit and reading the requesters' addresses costs little.
    """
    counts = dict.fromkeys(keys, 0)
    senders = [key.removeprefix(SENDER) for key in counts if key.startswith(SENDER)]
    domains = [key.removeprefix(DOMAIN) for key in counts if key.startswith(DOMAIN)]
    if not counts:
        return counts
    matches = Q(requester_address__in=senders)
    for domain in domains:
        matches |= Q(requester_address__endswith="@" + domain)
    addresses = (
        records_in_window()
        .annotate(requester_address=Lower("requester__email"))
        .filter(matches)
        .values_list("requester_address", flat=True)
    )
    for address in addresses:
        for key in keys_counting(address):
            if key in counts:
                counts[key] += 1
    return counts


def floods_held_in_window(keys: Iterable[str]) -> set[str]:
    """The keys with an email held within the hour: their flood was alerted already, unless
    that alert reached nobody (UnalertedFlood)."""
    keys = set(keys)
    if not keys:
        return set()
    held = set(
        Quarantine.objects.filter(flood_key__in=keys, received_at__gte=window_start())
        .values_list("flood_key", flat=True)
        .distinct()
    )
    if held:
        held -= set(
            UnalertedFlood.objects.filter(flood_key__in=held).values_list("flood_key", flat=True)
        )
    return held
