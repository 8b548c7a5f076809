from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from mailworker.admin_banner import admin_banner_facts
from mailworker.alerts import ADMIN_PERMISSION


def product(request: HttpRequest) -> dict[str, str]:
    """Values every page shows: the product name and the edition in force."""
    return {"product_name": "servicedesk", "edition": settings.EDITION}


def admin_banner(request: HttpRequest) -> dict[str, Any]:
    """For admins (staff who may change email integrations), on every page: what keeps the
    desk's alerts from reaching anyone, or an integration that keeps failing, each with a
    link to where to fix it (templates/base.html)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff:
        return {}
    if not user.has_perm(ADMIN_PERMISSION):
        return {}
    return {"admin_banner": admin_banner_facts()}
