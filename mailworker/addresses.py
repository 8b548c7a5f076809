"""Matching senders against admins' lists of addresses and domains."""

from __future__ import annotations


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def matches_sender_entry(address: str, entry: str) -> bool:
    """`jane@example.com` matches itself; `example.com` and `@example.com` match every
    address of that domain and of its subdomains."""
    address = address.strip().lower()
    entry = entry.strip().lower()
    if not address or not entry:
        return False
    if "@" in entry and not entry.startswith("@"):
        return address == entry
    domain = entry.lstrip("@")
    sender_domain = domain_of(address)
    return sender_domain == domain or sender_domain.endswith("." + domain)


def matches_any_sender_entry(address: str, entries: list[str]) -> bool:
    return any(matches_sender_entry(address, entry) for entry in entries)
