"""Events of integrations. `integrations` only says what happened; the mail engine listens
and decides whom to tell (DESIGN.md: imports point one way)."""

from django.dispatch import Signal

# The provider refused an integration's stored grant; nothing is tried until an admin
# connects again. Sent once per refusal, inside the transaction that marked it.
# integration: EmailIntegration; grant: its OAuthGrant (needs_reconnect_reason says why);
# provider: "Microsoft" or "Google"
needs_reconnect = Signal()

# An admin connected the integration (again): a new grant, and a "needs reconnect" ended.
# integration: EmailIntegration
reconnected = Signal()
