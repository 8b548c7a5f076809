from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from mailworker.alerts import ADMIN_PERMISSION, staff_with_permission
from mailworker.status import failing_integrations

# The banner's facts are read at most once per this many seconds per process: every page
# shows it, and what it reports (an address added, an integration recovered) can wait that
# long to disappear.
ADMIN_BANNER_CACHE_KEY = "admin-banner"
ADMIN_BANNER_SECONDS = 15


def product(request: HttpRequest) -> dict[str, str]:
    """Values every page shows: the product name and the edition in force."""
    return {"product_name": "servicedesk", "edition": settings.EDITION}


def admin_banner_facts() -> dict[str, Any]:
    """Two queries, cached briefly: whether any active admin has an email address, and the
    integrations that keep failing or must be connected again."""
    facts = cache.get(ADMIN_BANNER_CACHE_KEY)
    if facts is None:
        facts = {
            "no_admin_address": not staff_with_permission(ADMIN_PERMISSION)
            .exclude(email="")
            .exists(),
            "failing_integrations": failing_integrations(),
        }
        cache.set(ADMIN_BANNER_CACHE_KEY, facts, ADMIN_BANNER_SECONDS)
    return facts


def admin_banner(request: HttpRequest) -> dict[str, Any]:
    """For admins (staff who may change email integrations), on every page: what keeps the
    desk's alerts from reaching anyone, or an integration that keeps failing."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff:
        return {}
    if not user.has_perm(ADMIN_PERMISSION):
        return {}
    return {"admin_banner": admin_banner_facts()}
