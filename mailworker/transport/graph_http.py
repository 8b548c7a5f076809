"""Talking to Microsoft Graph as one mailbox: the bearer token, throttling, and Graph's
errors. The Graph mailbox (reading) and the Graph sender (sendMail) both build on it; each
says Graph's refusals in its own words by overriding the `*_error` methods.

One `requests.Session` per client (connections are reused; TLS is verified against the
system's CAs, or REQUESTS_CA_BUNDLE). At most GRAPH_CONCURRENT_REQUESTS requests are in
flight at once: Exchange Online answers a fifth concurrent request to one mailbox with 429.
A throttled request (429, 503) is retried after its Retry-After, but one client waits at
most GRAPH_THROTTLE_MAX_WAIT_SECONDS in all: a mailbox that stays throttled ends the pass
(or the drain) with a temporary error, and the next one goes on where this one stopped.
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

from integrations.models import EmailIntegration
from mailworker.transport import oauth
from mailworker.transport.errors import TEMPORARY_KINDS, TransportError, TransportErrorKind

logger = logging.getLogger(__name__)

# Statuses retried after Retry-After (or a doubling wait) by default. A caller whose request
# must not be repeated when its outcome is unknown (sendMail: 504 may have sent it) narrows it.
RETRIED_STATUSES = frozenset({429, 503, 504})
FIRST_BACKOFF_SECONDS = 1.0
MAX_SINGLE_WAIT_SECONDS = 60.0


IMMUTABLE_IDS = 'IdType="ImmutableId"'


class TokenRejected(Exception):
    """Graph refused the token (401) a worker thread was given; the client's own thread
    refreshes it (that touches the database) and asks again."""


@dataclass(frozen=True)
class GraphProblem:
    status: int
    code: str
    message: str

    @property
    def said(self) -> str:
        return f"{self.status} {self.code}: {self.message}".rstrip(": ")


class GraphHttpError(TransportError):
    """Graph answered with an error; `problem` is its status, code and message."""

    def __init__(
        self,
        kind: TransportErrorKind,
        message: str,
        *,
        problem: GraphProblem,
        field: str = "",
        temporary: bool = False,
    ) -> None:
        super().__init__(kind, message, field=field, temporary=temporary)
        self.problem = problem


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
    """Requests to Graph on behalf of `mailbox` with the integration's token."""

    def __init__(self, integration: EmailIntegration, *, mailbox: str, timeout: float) -> None:
        self.integration = integration
        self.mailbox = mailbox.strip()
        self.base_url = settings.MICROSOFT_GRAPH_URL.rstrip("/")
        self.timeout = min(timeout, settings.GRAPH_HTTP_TIMEOUT_SECONDS)
        self.concurrency = settings.GRAPH_CONCURRENT_REQUESTS
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "servicedesk"
        # Immutable ids (asked for on every request, as Graph wants): a message keeps its id
        # when it is moved, which the mailbox's processed marker relies on.
        self.session.headers["Prefer"] = IMMUTABLE_IDS
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._budget_lock = threading.Lock()
        self.throttled_seconds = 0.0
        self._token = ""

    def user_url(self, path: str) -> str:
        return f"{self.base_url}/users/{quote(self.mailbox, safe='@')}{path}"

    # The token (the client's own thread only: refreshing writes the database) ------------

    def access_token(self) -> str:
        """A valid token from the integration's OAuth grant; raises TransportError."""
        return oauth.access_token_for(self.integration)

    def token(self) -> str:
        if not self._token:
            self._token = self.access_token()
        return self._token

    def refresh_token(self, rejected: str) -> str:
        """Graph refused a token we held for valid (revoked early): refresh once."""
        oauth.expire_access_token(self.integration, rejected)
        self._token = ""
        return self.token()

    # Requests ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        action: str,
        retried: frozenset[int] = RETRIED_STATUSES,
        **options: Any,
    ) -> requests.Response:
        """Send the request; refresh the token once on 401. Raises TransportError saying
        what failed while doing `action`."""
        token = self.token()
        try:
            return self.request_with(token, method, url, action=action, retried=retried, **options)
        except TokenRejected:
            token = self.refresh_token(token)
        try:
            return self.request_with(token, method, url, action=action, retried=retried, **options)
        except TokenRejected as exc:
            raise self.refused_fresh_token(exc, action) from exc

    def request_with(
        self,
        token: str,
        method: str,
        url: str,
        *,
        action: str,
        retried: frozenset[int] = RETRIED_STATUSES,
        **options: Any,
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
                raise self.request_error(exc, action) from exc
            if response.status_code < 400:
                return response
            problem = problem_of(response)
            response.close()
            if response.status_code == 401:
                raise TokenRejected(f"{problem.code}: {problem.message}")
            if response.status_code in retried:
                wait = retry_after(response) or backoff
                backoff = min(backoff * 2, MAX_SINGLE_WAIT_SECONDS)
                self._wait_throttled(wait, problem, action)
                continue
            raise self.error_for(problem, action)

    def _wait_throttled(self, seconds: float, problem: GraphProblem, action: str) -> None:
        seconds = min(seconds, MAX_SINGLE_WAIT_SECONDS)
        with self._budget_lock:
            budget = settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS - self.throttled_seconds
            if seconds > budget:
                raise self.throttled_error(problem, action)
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

    # Errors: the defaults; the mailbox and the sender say them in their own words ----------

    def error_for(self, problem: GraphProblem, action: str) -> TransportError:
        if problem.status == 403:
            kind = TransportErrorKind.PERMISSION
        elif problem.status in (400, 404, 413):
            kind = TransportErrorKind.CONFIGURATION
        else:
            kind = TransportErrorKind.PROTOCOL
        return GraphHttpError(
            kind,
            f"Microsoft Graph answered {problem.said} while {action}.",
            problem=problem,
            temporary=problem.status >= 500 or problem.status in (408, 429),
        )

    def throttled_error(self, problem: GraphProblem, action: str) -> TransportError:
        return GraphHttpError(
            TransportErrorKind.THROTTLED,
            f"Microsoft Graph keeps throttling the mailbox {self.mailbox} ({problem.said}) "
            f"while {action}; {self.throttled_seconds:.0f} s were waited in all. The rest waits "
            "for the next round.",
            problem=problem,
            temporary=True,
        )

    def refused_fresh_token(self, exc: TokenRejected, action: str) -> TransportError:
        return TransportError(
            TransportErrorKind.AUTHENTICATION,
            f"Microsoft Graph refused a fresh access token for {self.mailbox} while "
            f"{action} ({exc}). Check the app's tenant and that its permissions were "
            "granted with admin consent.",
        )

    def request_error(self, exc: requests.RequestException, action: str) -> TransportError:
        kind, message = describe_request_error(exc, self.base_url, action)
        return TransportError(kind, message, temporary=kind in TEMPORARY_KINDS)

    def close(self) -> None:
        try:
            self.session.close()
        except Exception:
            logger.debug("Closing the Graph session of %s failed", self.mailbox, exc_info=True)


def retry_after(response: requests.Response) -> float | None:
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


def describe_request_error(
    exc: requests.RequestException, base_url: str, action: str
) -> tuple[TransportErrorKind, str]:
    if isinstance(exc, requests.exceptions.SSLError):
        return TransportErrorKind.CERTIFICATE, (
            f"The certificate of {base_url} could not be verified while {action} ({exc}). "
            "Check MICROSOFT_GRAPH_URL and the machine's CA certificates."
        )
    if isinstance(exc, requests.Timeout):
        return TransportErrorKind.TIMEOUT, f"{base_url} did not answer in time while {action}."
    if isinstance(exc, requests.ConnectionError):
        return (
            TransportErrorKind.UNREACHABLE,
            f"{base_url} could not be reached while {action}: {exc}.",
        )
    return TransportErrorKind.PROTOCOL, f"The request to {base_url} failed while {action}: {exc}."
