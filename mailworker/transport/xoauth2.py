"""The SASL XOAUTH2 initial response that IMAP, POP3 and SMTP send with an OAuth 2.0 access
token (Google's and Microsoft's format)."""

from __future__ import annotations

import base64


def xoauth2_string(user: str, access_token: str) -> str:
    """The initial response, not yet base64."""
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


def xoauth2_base64(user: str, access_token: str) -> str:
    return base64.b64encode(xoauth2_string(user, access_token).encode()).decode("ascii")
