"""OAuth 2.0 for Microsoft 365 and Google: connecting an integration, and the tokens it uses.

- `microsoft` (msal) and `google` (google-auth, google-auth-oauthlib) speak to the providers;
  only their endpoints come from settings, so the tests point them at a local server.
- `tokens` picks the provider and access (delegated or app-only) of an integration.
- `services` stores what a connect flow or a refresh brought, and marks an integration whose
  stored grant the provider refused as needing a reconnect.

The mail engine (mailworker) asks for an access token when it logs in; this package never
talks IMAP, POP3 or SMTP.
"""
