from __future__ import annotations

from datetime import datetime

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off
from django.contrib.auth.decorators import login_required
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

LOCKED_OUT_STATUS = 429


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Agents land on their records, admins without records on Settings > Email."""
    if request.user.is_staff and request.user.has_perm("records.view_servicerecord"):
        return redirect("records:list")
    if request.user.is_staff and request.user.has_perm("integrations.view_emailintegration"):
        return redirect("integrations:list")
    return render(request, "home.html")


def lockout_ends_at(request: HttpRequest, credentials: dict | None) -> datetime:
    """When the lockout of this username and address ends: the cool-off after the failure
    that counts last (tries while locked out are not counted; see AXES_RESET_COOL_OFF_...)."""
    now = timezone.now()
    cool_off = get_cool_off(request)
    if cool_off is None:
        return now
    handler = AxesProxyHandler.get_implementation()
    last_failure = None
    # The database handler keeps the failures; other handlers fall back to "from now".
    for attempts in getattr(handler, "get_user_attempts", lambda *_: [])(request, credentials):
        latest = attempts.aggregate(latest=Max("attempt_time"))["latest"]
        if latest is not None and (last_failure is None or latest > last_failure):
            last_failure = latest
    return max(now, (last_failure or now) + cool_off)


def locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse:
    """The page shown instead of the login form after too many failed logins (AXES_LOCKOUT_
    CALLABLE): says until when, and that an admin can lift it sooner."""
    ends_at = lockout_ends_at(request, credentials)
    minutes = max(1, round((ends_at - timezone.now()).total_seconds() / 60))
    context = {
        "username": get_client_username(request, credentials) or "",
        "ends_at": ends_at,
        "minutes": minutes,
    }
    return render(request, "registration/locked_out.html", context, status=LOCKED_OUT_STATUS)
