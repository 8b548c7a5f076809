"""Push delivery: IMAP IDLE connections for many mailboxes in one process.

`manage.py mailidle` keeps one IDLE connection per IMAP mailbox that opted in and whose
server announces IDLE (RFC 2177). When the server reports new mail it queues a pass (the
Celery task `poll_integration`), so an email becomes a record about a second after delivery
instead of up to a poll interval later. Polling by beat stays as the safety net: nothing is
lost when this process is down, only slower.

One thread waits on every connection at once through a selector, so a process holds as many
mailboxes as it may open sockets. Connecting (TCP, TLS, login) blocks for up to the timeout,
so a small pool of threads does it, and one slow server never holds up the others.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from integrations.models import EmailIntegration, MailboxAccess
from mailworker.mailboxes.factory import open_mailbox
from mailworker.mailboxes.imap import ImapMailbox
from mailworker.models import MailboxState
from mailworker.scheduling import PUSH_QUEUE
from mailworker.status import note_idle_status, note_passes_queued

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.5
# Connects handed to each connect thread at a time (refilled every tick).
CONNECTS_QUEUED_PER_THREAD = 16
CONNECT_TIMEOUT_SECONDS = 30.0
# New-mail events closer together than this start one pass, plus one after the burst: a
# pass reads everything waiting, so a burst of deliveries needs no pass per email.
DEBOUNCE_SECONDS = 1.0
STATUS_LISTENING = "listening"
STATUS_UNSUPPORTED = "the server does not announce IDLE: polling only"

NewMailHandler = Callable[[int], None]


class IdleUnsupported(Exception):
    """The server has no IDLE capability."""


@dataclass
class Watch:
    """One mailbox the listener watches, and how its connection fares."""

    integration_id: int
    name: str
    version: datetime  # the integration's updated_at: an edited integration reconnects
    integration: EmailIntegration  # as the last reload read it
    mailbox: ImapMailbox | None = None
    connecting: Future[ImapMailbox] | None = None
    idle_since: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    unsupported: bool = False
    last_pass_at: float = float("-inf")
    pass_pending: bool = False
    status: str = ""
    # When it was first watched (the listener's clock): how long its connect may wait.
    watched_since: float = 0.0


def queue_pass(integration_id: int) -> None:
    """Ask a worker for a pass; it retries while another pass holds the mailbox's lock."""
    from mailworker.tasks import poll_integration

    poll_integration.apply_async(
        args=(integration_id,), kwargs={"retry_if_busy": True}, queue=PUSH_QUEUE
    )


def queue_catch_up_pass(integration_id: int) -> None:
    """Mail that arrived while nobody listened (found when the connection opens): a routine
    pass on the default queue, unless one is queued already. Not on the new-mail queue: at
    start-up a thousand mailboxes with mail waiting would queue a thousand passes there, which
    workers take first, and heartbeats, the outbox and real new mail would wait behind them."""
    from mailworker.tasks import poll_integration

    state = MailboxState.objects.filter(integration_id=integration_id).first()
    if state is not None and state.pass_queued_at is not None:
        stale = timedelta(seconds=settings.POLL_QUEUED_STALE_SECONDS)
        if timezone.now() - state.pass_queued_at < stale:
            return
    note_passes_queued([integration_id])
    poll_integration.delay(integration_id)


def idle_integrations() -> list[EmailIntegration]:
    """Enabled incoming IMAP integrations that opted in to push delivery."""
    return [
        integration
        for integration in EmailIntegration.objects.filter(
            incoming_enabled=True, use_idle=True
        ).select_related("oauth_grant")
        if integration.mailbox_protocol == MailboxAccess.IMAP and not integration.needs_reconnect
    ]


# Descriptors beside the IDLE connections: the database, the broker, connect threads' sockets
# while they log in, log files.
SPARE_FILE_DESCRIPTORS = 64


def raise_open_file_limit(connections: int) -> str:
    """Raise this process's open-file limit (RLIMIT_NOFILE) to its hard limit: one IDLE
    connection is one descriptor, and a thousand mailboxes need more than the usual soft
    limit of 1,024. Returns what it did, in words, saying so when the hard limit is too low
    for `connections` and how to raise it."""
    try:
        import resource
    except ImportError:  # not Unix: nothing to raise
        return ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %s: %s", soft, exc)
    room = soft - SPARE_FILE_DESCRIPTORS
    if connections > room:
        return (
            f"open-file limit {soft}: room for about {max(room, 0)} IDLE connections, but "
            f"{connections} integrations use push delivery; the others are polled only. Raise "
            "the hard limit (docker: ulimit nofile; systemd: LimitNOFILE=; shell: ulimit -Hn)."
        )
    return f"open-file limit {soft} (room for about {room} IDLE connections)"


def open_idle_connection(integration: EmailIntegration) -> ImapMailbox:
    """Connect, log in, select the folder and enter IDLE (run in a connect thread).
    `integration` as the last reload read it: a password's mailbox is connected without a
    query, so a thousand connects at start-up are not a thousand new PostgreSQL backends
    for the threads. An OAuth 2.0 one is read again here: its grant's tokens change with
    every refresh (a worker's pass may have rotated the refresh token since the reload)."""
    try:
        if integration.uses_oauth:
            integration = EmailIntegration.objects.select_related("oauth_grant").get(
                pk=integration.pk
            )
        mailbox = open_mailbox(integration, timeout=CONNECT_TIMEOUT_SECONDS)
        if not isinstance(mailbox, ImapMailbox):
            raise IdleUnsupported
        mailbox.connect()
        try:
            if not mailbox.client.has_capability("IDLE"):
                raise IdleUnsupported
            mailbox.client.idle()
        except BaseException:
            mailbox.close()
            raise
        return mailbox
    finally:
        connection.close()  # this thread's own, if it opened one


def has_new_mail(responses: list[tuple]) -> bool:
    """EXISTS is what a server sends when mail arrives (RFC 3501 7.3.1). RECENT is not a
    sign of it: Dovecot sends "* n RECENT" after every EXPUNGE too, with the \\Recent
    messages left, so a mailbox whose pass removes what it imported would ask for a pass
    after each chunk, each finding the mailbox busy and retrying (issue 15's bench: a
    draining mailbox of 2,000 emails flooded the push queue ahead of every other pass)."""
    return any(
        len(response) >= 2
        and response[1] == b"EXISTS"
        and isinstance(response[0], int)
        and response[0] > 0
        for response in responses
    )


def server_says_bye(responses: list[tuple]) -> bool:
    return any(response and response[0] == b"BYE" for response in responses)


class IdleListener:
    def __init__(
        self,
        *,
        on_new_mail: NewMailHandler = queue_pass,
        on_catch_up: NewMailHandler = queue_catch_up_pass,
        connect_threads: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_new_mail = on_new_mail
        self.on_catch_up = on_catch_up
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.watches: dict[int, Watch] = {}
        self.connector = ThreadPoolExecutor(connect_threads, thread_name_prefix="idle-connect")
        self.max_connecting = connect_threads * CONNECTS_QUEUED_PER_THREAD
        # A plain flag, not a threading.Event: stop() runs in a signal handler on the main
        # thread, and Event.set() there deadlocks when the signal lands while the same thread
        # holds the Event's lock inside Event.wait().
        self.stop_requested = False
        self._busy = False
        self._busy_checked_at = float("-inf")

    # The loop --------------------------------------------------------------------------

    def run(self) -> None:
        next_reload = 0.0
        try:
            while not self.stop_requested:
                now = self.clock()
                if now >= next_reload:
                    close_old_connections()
                    self.reload()
                    next_reload = now + settings.IDLE_RELOAD_SECONDS
                self.start_connections(now)
                self.collect_connections(now)
                self.renew_idles(now)
                self.wait_for_events(TICK_SECONDS)
                self.run_pending_passes(self.clock())
        finally:
            self.close_all()

    def stop(self) -> None:
        """Ask the loop to end within one tick; safe to call from a signal handler."""
        self.stop_requested = True

    @property
    def listening(self) -> int:
        return sum(1 for watch in self.watches.values() if watch.mailbox is not None)

    # Which mailboxes -----------------------------------------------------------------

    def reload(self) -> None:
        """Follow the integrations: watch new ones, reconnect edited ones, drop the rest."""
        wanted = {integration.pk: integration for integration in idle_integrations()}
        for integration_id, watch in list(self.watches.items()):
            integration = wanted.get(integration_id)
            if integration is None or integration.updated_at != watch.version:
                self.drop(watch, status="")
        for integration_id, integration in wanted.items():
            if integration_id not in self.watches:
                self.watches[integration_id] = Watch(
                    integration_id,
                    integration.name,
                    integration.updated_at,
                    integration,
                    watched_since=self.clock(),
                )
            self.watches[integration_id].integration = integration

    # Connections ---------------------------------------------------------------------

    def start_connections(self, now: float) -> None:
        due = [
            watch
            for watch in self.watches.values()
            if watch.mailbox is None
            and watch.connecting is None
            and not watch.unsupported
            and watch.retry_at <= now
        ]
        if not due:
            return
        if self.workers_busy(now):
            # Mailboxes watched a while already (a reconnect) do not wait.
            limit = settings.IDLE_CONNECT_WAIT_MAX_SECONDS
            due = [watch for watch in due if now - watch.watched_since >= limit]
        # A few ticks' worth at a time, not all of them: a thousand handed to the threads at
        # once would all be opened whatever workers_busy() says a second later.
        connecting = sum(1 for watch in self.watches.values() if watch.connecting is not None)
        for watch in due[: max(0, self.max_connecting - connecting)]:
            watch.connecting = self.connector.submit(open_idle_connection, watch.integration)

    def workers_busy(self, now: float) -> bool:
        """Whether more routine passes are queued than IDLE_CONNECT_WHEN_QUEUED_AT_MOST (read
        at most once a second). Then new IDLE connections wait, up to
        IDLE_CONNECT_WAIT_MAX_SECONDS from when a mailbox was first watched: at start-up a
        thousand mailboxes' first passes are queued, each reads what waits in its mailbox,
        and a thousand logins beside them (TLS on both sides, a server process each) took a
        core for 15-20 s and made those passes late (README, Performance: many mailboxes).
        Push matters once a mailbox has been read."""
        if now < self._busy_checked_at + 1.0:
            return self._busy
        self._busy_checked_at = now
        stale = timezone.now() - timedelta(seconds=settings.POLL_QUEUED_STALE_SECONDS)
        try:
            # Of mailboxes still read: a disabled one's task may have been dropped unrun.
            queued = MailboxState.objects.filter(
                pass_queued_at__gte=stale, integration__incoming_enabled=True
            ).count()
        except Exception:  # the database is down: connecting needs no database
            logger.warning("IDLE: could not count the queued passes", exc_info=True)
            queued = 0
        busy = queued > settings.IDLE_CONNECT_WHEN_QUEUED_AT_MOST
        if busy and not self._busy:
            logger.info("IDLE: %d routine passes queued; new connections wait for them", queued)
        self._busy = busy
        return busy

    def collect_connections(self, now: float) -> None:
        for watch in list(self.watches.values()):
            future = watch.connecting
            if future is None or not future.done():
                continue
            watch.connecting = None
            try:
                mailbox = future.result()
            except IdleUnsupported:
                watch.unsupported = True
                self.set_status(watch, STATUS_UNSUPPORTED)
                continue
            except Exception as exc:
                self.fail(watch, exc)
                continue
            if self.watches.get(watch.integration_id) is not watch:
                # Dropped while connecting: end the IDLE before logging out.
                with contextlib.suppress(Exception):
                    mailbox.client.idle_done()
                mailbox.close()
                continue
            watch.mailbox = mailbox
            watch.idle_since = now
            watch.failures = 0
            self.selector.register(mailbox.client.socket(), selectors.EVENT_READ, watch)
            self.set_status(watch, STATUS_LISTENING)
            logger.info("IDLE %s: listening", watch.name)
            if mailbox.exists_on_select:
                # Mail arrived while we were not listening: do not wait for the poll.
                try:
                    self.on_catch_up(watch.integration_id)
                except Exception:  # the broker is down: beat's poll reads it when it is back
                    logger.exception("IDLE %s: could not queue a pass", watch.name)

    def renew_idles(self, now: float) -> None:
        """Re-issue IDLE before the server drops it (RFC 2177: servers may after 30 min)."""
        for watch in list(self.watches.values()):
            renew_at = watch.idle_since + settings.IDLE_REISSUE_SECONDS
            if watch.mailbox is not None and now >= renew_at:
                self.reissue_idle(watch, now)

    def reissue_idle(self, watch: Watch, now: float) -> None:
        assert watch.mailbox is not None
        try:
            client = watch.mailbox.client
            _tag_line, responses = client.idle_done()
            client.idle()
        except Exception as exc:
            self.fail(watch, exc)
            return
        watch.idle_since = now
        if has_new_mail(responses):
            self.request_pass(watch, now)

    # Events ------------------------------------------------------------------------------

    def wait_for_events(self, timeout: float) -> None:
        if not self.selector.get_map():
            time.sleep(timeout)  # A signal handler still runs during the sleep.
            return
        for key, _mask in self.selector.select(timeout):
            self.read_responses(key.data)

    def read_responses(self, watch: Watch) -> None:
        if watch.mailbox is None:
            return
        now = self.clock()
        try:
            responses = watch.mailbox.client.idle_check(timeout=0)
        except Exception as exc:
            self.fail(watch, exc)
            return
        if server_says_bye(responses):
            self.fail(watch, ConnectionError("the server ended the IDLE session (BYE)"))
            return
        if not responses:
            # Readable with nothing to read is how a closed connection looks (imapclient
            # swallows the EOF): talking to the server tells a dead connection from a
            # partial line.
            self.reissue_idle(watch, now)
            return
        if has_new_mail(responses):
            self.request_pass(watch, now)

    def request_pass(self, watch: Watch, now: float) -> None:
        if now - watch.last_pass_at >= DEBOUNCE_SECONDS:
            self.start_pass(watch, now)
        else:
            watch.pass_pending = True

    def run_pending_passes(self, now: float) -> None:
        for watch in self.watches.values():
            if watch.pass_pending and now - watch.last_pass_at >= DEBOUNCE_SECONDS:
                self.start_pass(watch, now)

    def start_pass(self, watch: Watch, now: float) -> None:
        watch.last_pass_at = now
        watch.pass_pending = False
        try:
            self.on_new_mail(watch.integration_id)
        except Exception:
            # The broker is down: the poll by beat will read the mailbox when it is back.
            logger.exception("IDLE %s: could not queue a pass", watch.name)

    # Failures and closing ----------------------------------------------------------------

    def fail(self, watch: Watch, exc: BaseException) -> None:
        self.disconnect(watch, polite=False)
        watch.failures += 1
        delay = min(2.0**watch.failures, float(settings.IDLE_RECONNECT_MAX_SECONDS))
        watch.retry_at = self.clock() + delay
        self.set_status(watch, f"reconnecting in {delay:.0f} s: {exc}")
        logger.warning("IDLE %s: %s; reconnecting in %.0f s", watch.name, exc, delay)

    def disconnect(self, watch: Watch, *, polite: bool) -> None:
        mailbox, watch.mailbox = watch.mailbox, None
        if mailbox is None:
            return
        client = mailbox.client
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(client.socket())
        if polite:
            try:
                client.idle_done()
            except Exception:
                logger.debug("IDLE %s: DONE failed", watch.name, exc_info=True)
            mailbox.close()
        else:
            try:
                client.shutdown()
            except Exception:
                logger.debug("IDLE %s: shutdown failed", watch.name, exc_info=True)

    def drop(self, watch: Watch, *, status: str) -> None:
        self.watches.pop(watch.integration_id, None)
        self.disconnect(watch, polite=True)
        if watch.connecting is not None:
            watch.connecting.cancel()
        self.set_status(watch, status)

    def close_all(self) -> None:
        for watch in list(self.watches.values()):
            self.drop(watch, status="")
        self.connector.shutdown(wait=False, cancel_futures=True)
        self.selector.close()

    def set_status(self, watch: Watch, status: str) -> None:
        """Shown on the integrations list; written only when it changes."""
        if status == watch.status:
            return
        watch.status = status
        try:
            note_idle_status(integration_id=watch.integration_id, status=status)
        except Exception:
            logger.exception("IDLE %s: could not record its status", watch.name)
