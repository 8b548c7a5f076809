"""The Content-Security-Policy middleware: django-csp's, with the OAuth providers' sign-in
pages as the only form targets besides the desk itself."""

from __future__ import annotations

from urllib.parse import urlsplit

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase


def origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def oauth_sign_in_origins() -> list[str]:
    """Where Connect (Settings > Email) sends the browser: the desk answers the form's POST
    with a redirect there, and browsers hold that redirect to the page's form-action."""
    urls = (settings.OAUTH_MICROSOFT_AUTHORITY_HOST, settings.OAUTH_GOOGLE_AUTH_URI)
    return sorted({found for found in map(origin, urls) if found})


class DeskCSPMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        update = dict(parts.update or {})
        update["form-action"] = [*update.get("form-action", []), *oauth_sign_in_origins()]
        parts.update = update
        return parts
