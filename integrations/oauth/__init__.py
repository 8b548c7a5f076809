"""OAuth 2.0 for Microsoft 365 and Google: connecting an integration, and the tokens it uses.

- `microsoft` (msal) and `google` (google-auth, google-auth-oauthlib) speak to the providers;
  only their endpoints come from settings, so the tests point them at a local server.
- `services` picks the provider and access (delegated or app-only) of an integration, stores
  what a connect flow or a refresh brought in its OAuthGrant, and marks a grant the
  provider refused as needing a reconnect (`integrations.signals.needs_reconnect`).
- `tokens` hands out a valid access token (`access_token_for`), refreshing it once for
  all workers.

The mail engine (mailworker) asks `tokens` for an access token when it logs in (IMAP, POP3,
SMTP, Graph); this package never talks IMAP, POP3 or SMTP, and never imports the mail engine.
"""
