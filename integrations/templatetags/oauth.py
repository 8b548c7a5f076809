"""`{% oauth_redirect_uri %}`: the redirect URI to register with Microsoft and Google, on any
page that shows an integration (the edit page is also rendered by the Test buttons)."""

from __future__ import annotations

from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def oauth_redirect_uri(context: template.Context) -> str:
    from integrations.views import oauth_redirect_uri as build

    return build(context["request"])


@register.simple_tag
def oauth_provider_name(integration) -> str:
    from integrations.oauth.services import provider_name

    return provider_name(integration)
