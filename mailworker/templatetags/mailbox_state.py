"""What the mail engine saw of each integration, for integrations' own pages.

`integrations` never imports the mail engine (DESIGN.md), so its views do not read
MailboxState; their templates load this library, which the mail engine registers:

    {% load mailbox_state %}
    {% mailbox_states integrations as states %}          one query for a list
    {% with state=states|state_for:integration %} ...
    {% mailbox_state integration as state %}            one integration's page
"""

from __future__ import annotations

from collections.abc import Iterable

from django import template

from integrations.models import EmailIntegration
from mailworker.models import MailboxState
from mailworker.status import state_of, states_by_integration

register = template.Library()


@register.simple_tag
def mailbox_states(integrations: Iterable[EmailIntegration]) -> dict[int, MailboxState]:
    return states_by_integration([integration.pk for integration in integrations])


@register.filter
def state_for(states: dict[int, MailboxState], integration: EmailIntegration) -> MailboxState:
    return states.get(integration.pk) or MailboxState(integration_id=integration.pk)


@register.simple_tag
def mailbox_state(integration: EmailIntegration) -> MailboxState:
    if integration.pk is None:
        return MailboxState()
    return state_of(integration)
