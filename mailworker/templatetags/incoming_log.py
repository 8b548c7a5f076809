"""Links of the incoming email log to screens other parts of the desk may or may not have."""

from __future__ import annotations

from django import template
from django.urls import NoReverseMatch, reverse

register = template.Library()


@register.simple_tag
def url_or_empty(name: str, *args: object) -> str:
    """The URL named `name`, or "" when this desk has no such URL (the page still renders and
    the template shows no link)."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return ""
