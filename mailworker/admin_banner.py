"""What the banner on every admin page reports (servicedesk/context_processors.py): that
no admin has an email address, so alerts reach nobody, or integrations that keep failing.

Read at most once per ADMIN_BANNER_SECONDS per process: every page shows it. A saved user
forgets it at once (an admin who has just added an address sees the banner go); a recovered
integration drops out within those seconds."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache

from mailworker.alerts import ADMIN_PERMISSION, staff_with_permission
from mailworker.status import failing_integrations

ADMIN_BANNER_CACHE_KEY = "admin-banner"
ADMIN_BANNER_SECONDS = 15


def admin_banner_facts() -> dict[str, Any]:
    """Two queries, then the cached answer."""
    facts = cache.get(ADMIN_BANNER_CACHE_KEY)
    if facts is None:
        admins_with_address = staff_with_permission(ADMIN_PERMISSION).exclude(email="")
        facts = {
            "no_admin_address": not admins_with_address.exists(),
            "failing_integrations": failing_integrations(),
        }
        cache.set(ADMIN_BANNER_CACHE_KEY, facts, ADMIN_BANNER_SECONDS)
    return facts


def forget_admin_banner(**_kwargs: Any) -> None:
    cache.delete(ADMIN_BANNER_CACHE_KEY)
