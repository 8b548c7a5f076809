"""Talking to Microsoft Graph for one mailbox: the bearer token, throttling, and errors in
words an admin can act on.

One `requests.Session` per mailbox session (connections are reused; TLS is verified against
the system's CAs, or REQUESTS_CA_BUNDLE). At most GRAPH_CONCURRENT_REQUESTS requests are in
flight at once: Exchange Online answers a fifth concurrent request to one mailbox with 429.
A 429 or 503 is retried after its Retry-After, but a pass waits at most
GRAPH_THROTTLE_MAX_WAIT_SECONDS in all: a mailbox that stays throttled ends the pass with a
temporary error, and the next pass goes on where this one stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from integrations.models import EmailIntegration, OAuthAccess
from mailworker.mailboxes.base import MailboxAuthError, MailboxError
from mailworker.mailboxes.oauth import access_token_for, expire_access_token

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 503, 504})
# Without a Retry-After, wait this long before the first retry, doubling after each.
FIRST_BACKOFF_SECONDS = 1.0
MAX_SINGLE_WAIT_SECONDS = 60.0


IMMUTABLE_IDS = 'IdType="ImmutableId"'


class GraphNotFound(MailboxError):
    """Graph answered 404: the mailbox, folder or message does not exist (any more)."""


class DeltaExpired(MailboxError):
    """Graph no longer knows the delta link (410 Gone, SyncStateNotFound): sync again from
    the start."""


class TokenRejected(Exception):
    """Graph refused the token (401) a worker thread was given; the pass's own thread
    refreshes it (that touches the database) and asks again."""


@dataclass(frozen=True)
class GraphProblem:
    status: int
    code: str
    message: str


def problem_of(response: requests.Response) -> GraphProblem:
    """Graph's error body: {"error": {"code": ..., "message": ...}}."""
    code, message = "", ""
    try:
        error = response.json().get("error") or {}
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, AttributeError):
        message = response.text[:300]
    return GraphProblem(status=response.status_code, code=code, message=message.strip())


class GraphClient:
    def __init__(self, integration: EmailIntegration, *, timeout: float) -> None:
        self.integration = integration
        self.mailbox = integration.incoming_username.strip()
        self.base_url = settings.MICROSOFT_GRAPH_URL.rstrip("/")
        self.timeout = min(timeout, settings.GRAPH_HTTP_TIMEOUT_SECONDS)
        self.concurrency = settings.GRAPH_CONCURRENT_REQUESTS
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "servicedesk"
        # Immutable ids (asked for on every request, as Graph wants): a message keeps its id
        # when it is moved, which the processed marker relies on (see GraphMailbox).
        self.session.headers["Prefer"] = IMMUTABLE_IDS
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._budget_lock = threading.Lock()
        self.throttled_seconds = 0.0
        self._token = ""

    # Addresses -------------------------------------------------------------------------

    def user_url(self, path: str) -> str:
        return f"{self.base_url}/users/{quote(self.mailbox, safe='@')}{path}"

    # The token (the pass's own thread only: refreshing writes the database) --------------

    def token(self) -> str:
        if not self._token:
            self._token = access_token_for(self.integration)
        return self._token

    def refresh_token(self, rejected: str) -> str:
        """Graph refused a token we held for valid: refresh once."""
        expire_access_token(self.integration, rejected)
        self._token = ""
        return self.token()

    # Requests ------------------------------------------------------------------------------

    def request(self, method: str, url: str, *, action: str, **options: Any) -> requests.Response:
        """Send the request; refresh the token once on 401. Raises MailboxError (or
        MailboxAuthError) saying what failed while doing `action`."""
        token = self.token()
        try:
            return self.request_with(token, method, url, action=action, **options)
        except TokenRejected:
            token = self.refresh_token(token)
        try:
            return self.request_with(token, method, url, action=action, **options)
        except TokenRejected as exc:
            raise self.refused_fresh_token(exc, action) from exc

    def refused_fresh_token(self, exc: TokenRejected, action: str) -> MailboxAuthError:
        return MailboxAuthError(
            f"Microsoft Graph refused a fresh access token for {self.mailbox} while "
            f"{action} ({exc}). Check the app's tenant and that its permissions were "
            "granted with admin consent."
        )

    def request_with(
        self, token: str, method: str, url: str, *, action: str, **options: Any
    ) -> requests.Response:
        """One request with this token, retried while Graph throttles (any thread).
        Raises TokenRejected on 401."""
        headers = {"Authorization": f"Bearer {token}", **options.pop("headers", {})}
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                with self._slots:
                    response = self.session.request(
                        method, url, headers=headers, timeout=self.timeout, **options
                    )
            except requests.RequestException as exc:
                raise MailboxError(_describe_request_error(exc, self.base_url, action)) from exc
            if response.status_code < 400:
                return response
            problem = problem_of(response)
            response.close()
            if response.status_code == 401:
                raise TokenRejected(f"{problem.code}: {problem.message}")
            if response.status_code in RETRIED_STATUSES:
                wait = _retry_after(response) or backoff
                backoff = min(backoff * 2, MAX_SINGLE_WAIT_SECONDS)
                self._wait_throttled(wait, problem, action)
                continue
            raise self.error_for(problem, action)

    def _wait_throttled(self, seconds: float, problem: GraphProblem, action: str) -> None:
        seconds = min(seconds, MAX_SINGLE_WAIT_SECONDS)
        with self._budget_lock:
            budget = settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS - self.throttled_seconds
            if seconds > budget:
                raise MailboxError(
                    f"Microsoft Graph keeps throttling the mailbox {self.mailbox} "
                    f"({problem.status} {problem.code}: {problem.message}) while {action}; "
                    f"this pass waited {self.throttled_seconds:.0f} s in all and stops here. "
                    "The next pass goes on."
                )
            self.throttled_seconds += seconds
        logger.info(
            "Graph throttled %s (%s %s) while %s: waiting %.1f s",
            self.mailbox,
            problem.status,
            problem.code,
            action,
            seconds,
        )
        time.sleep(seconds)

    # Errors ------------------------------------------------------------------------------

    def error_for(self, problem: GraphProblem, action: str) -> MailboxError:
        said = f"{problem.status} {problem.code}: {problem.message}".rstrip(": ")
        if problem.status == 403:
            return MailboxAuthError(self._permission_advice(problem))
        if problem.status == 404:
            return GraphNotFound(f"Microsoft Graph found nothing while {action} ({said}).")
        if problem.status == 410 or problem.code.lower() in ("syncstatenotfound", "resyncrequired"):
            return DeltaExpired(f"Microsoft Graph forgot the delta link ({said}).")
        if problem.status == 400 and problem.code == "ErrorInvalidUser":
            return GraphNotFound(f"Microsoft Graph does not know the mailbox ({said}).")
        return MailboxError(f"Microsoft Graph answered {said} while {action}.")

    def _permission_advice(self, problem: GraphProblem) -> str:
        """Graph says only "Access is denied": name what is missing, as far as one can tell
        from the outside."""
        said = f"{problem.code}: {problem.message}"
        who = f"Microsoft Graph refused access to the mailbox {self.mailbox} ({said})."
        text = problem.message.lower()
        if "accesspolicy" in text or "[raop]" in text:
            return (
                f"{who} The tenant's application access policy does not include this mailbox "
                f"for the app {self.integration.oauth_client_id}: add the mailbox (or the "
                "mail-enabled security group it is in) to the policy in Exchange Online "
                "(New-ApplicationAccessPolicy -AccessRight RestrictAccess; "
                "Test-ApplicationAccessPolicy shows the result). Changes take up to an hour."
            )
        if self.integration.oauth_access == OAuthAccess.APP_ONLY:
            return (
                f"{who} The app {self.integration.oauth_client_id} needs the Microsoft Graph "
                "application permission Mail.ReadWrite (and Mail.Send to send), granted with "
                "admin consent in Microsoft Entra (App registrations > API permissions). If "
                "the tenant limits the app to some mailboxes with an application access "
                "policy, the policy must include this one."
            )
        return (
            f"{who} The signed-in user needs the delegated permission Mail.ReadWrite "
            "(consented for the app) and, for a shared mailbox, Full Access to it. Press "
            "Connect with Microsoft again after the permission was granted."
        )

    def close(self) -> None:
        try:
            self.session.close()
        except Exception:
            logger.debug("Closing the Graph session of %s failed", self.mailbox, exc_info=True)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _describe_request_error(exc: requests.RequestException, base_url: str, action: str) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"The certificate of {base_url} could not be verified while {action} ({exc}). "
            "Check MICROSOFT_GRAPH_URL and the machine's CA certificates."
        )
    if isinstance(exc, requests.Timeout):
        return f"{base_url} did not answer in time while {action}."
    if isinstance(exc, requests.ConnectionError):
        return f"{base_url} could not be reached while {action}: {exc}."
    return f"The request to {base_url} failed while {action}: {exc}."
