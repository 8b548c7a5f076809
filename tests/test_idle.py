"""Push delivery with IMAP IDLE on the real Dovecot: the listener in this process for its
behaviour, then `manage.py mailidle` with a Celery worker for the delivery-to-record time."""

from __future__ import annotations

import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from imapclient import DELETED, IMAPClient

from integrations.models import EmailIntegration
from mailworker.idle import STATUS_LISTENING, IdleListener, has_new_mail, queue_catch_up_pass
from mailworker.models import MailboxState
from mailworker.scheduling import due_integration_ids
from mailworker.status import note_passes_queued, note_poll
from records.models import ServiceRecord
from tests.dovecot import Dovecot
from tests.mail import make_email
from tests.workers import Workers, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """Stands in for the Celery queue: remembers which integrations asked for a pass."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.catch_ups: list[int] = []
        self.lock = threading.Lock()

    def catch_up(self, integration_id: int) -> None:
        with self.lock:
            self.catch_ups.append(integration_id)

    def __call__(self, integration_id: int) -> None:
        with self.lock:
            self.calls.append(integration_id)

    def count(self, integration_id: int) -> int:
        with self.lock:
            return self.calls.count(integration_id)


@pytest.fixture
def listener(settings) -> Iterator[tuple[IdleListener, Recorder]]:
    settings.IDLE_RELOAD_SECONDS = 1
    recorder = Recorder()
    idle = IdleListener(on_new_mail=recorder, on_catch_up=recorder.catch_up)
    thread = threading.Thread(target=idle.run, name="idle-listener", daemon=True)
    thread.start()
    yield idle, recorder
    idle.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def idle_status(integration: EmailIntegration) -> str:
    state = MailboxState.objects.filter(integration=integration).first()
    return state.idle_status if state else ""


def wait_for_status(integration: EmailIntegration, prefix: str, timeout: float = 30) -> None:
    wait_until(
        lambda: idle_status(integration).startswith(prefix),
        timeout=timeout,
        message=f"IDLE status stayed {idle_status(integration)!r}, expected {prefix!r}...",
    )


def test_new_mail_asks_for_a_pass_at_once(
    listener: tuple[IdleListener, Recorder],
    dovecot: Dovecot,
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    _idle, recorder = listener
    integration = dovecot_integration(poll_interval_seconds=3600)
    wait_for_status(integration, STATUS_LISTENING)
    assert recorder.count(integration.pk) == 0  # an empty mailbox needs no pass

    dovecot.deliver(integration.incoming_username, make_email(subject="Pushed"))

    wait_until(lambda: recorder.count(integration.pk) == 1, timeout=10)


def test_mail_waiting_when_the_listener_connects_asks_for_a_pass(
    listener: tuple[IdleListener, Recorder],
    dovecot: Dovecot,
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    _idle, recorder = listener
    integration = dovecot_integration(use_idle=False)
    dovecot.deliver(integration.incoming_username, make_email(subject="Waiting"))
    EmailIntegration.objects.filter(pk=integration.pk).update(use_idle=True)
    # updated_at is what tells the listener about an edit; update() leaves it alone.
    EmailIntegration.objects.get(pk=integration.pk).save()

    wait_for_status(integration, STATUS_LISTENING)
    # A routine pass (the default queue), not a new-mail one: at start-up a thousand
    # mailboxes with mail waiting would fill the queue workers take first.
    wait_until(lambda: recorder.catch_ups.count(integration.pk) == 1, timeout=10)
    assert recorder.count(integration.pk) == 0


def test_a_catch_up_pass_is_a_routine_pass_queued_once(
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    integration = dovecot_integration(use_idle=True)
    queue_catch_up_pass(integration.pk)
    state = MailboxState.objects.get(integration=integration)
    assert state.pass_queued_at is not None
    # Reconnecting again soon after: the queued pass will find the mail; no second one.
    queue_catch_up_pass(integration.pk)
    assert MailboxState.objects.get(integration=integration).pass_queued_at == state.pass_queued_at
    assert integration.pk not in due_integration_ids()


def test_new_connections_wait_while_many_routine_passes_are_queued(
    listener: tuple[IdleListener, Recorder],
    dovecot_integration: Callable[..., EmailIntegration],
    settings,
) -> None:
    """At start-up every mailbox's first pass is queued: each reads what waits, and logging
    in beside them only makes them late. The listener connects once the queue is short."""
    idle, _recorder = listener
    settings.IDLE_CONNECT_WHEN_QUEUED_AT_MOST = 1
    others = [dovecot_integration(use_idle=False) for _ in range(2)]
    note_passes_queued([other.pk for other in others])
    integration = dovecot_integration(poll_interval_seconds=3600)
    wait_until(lambda: integration.pk in idle.watches, timeout=10)
    time.sleep(2.5)  # two reloads and five ticks: it would have connected by now

    watch = idle.watches[integration.pk]
    assert watch.mailbox is None and watch.connecting is None
    assert idle_status(integration) == ""

    note_poll(integration=others[0], error=None)  # one pass done: one queued, not more
    wait_for_status(integration, STATUS_LISTENING, timeout=15)


def test_a_mailbox_waits_for_queued_passes_only_so_long(
    listener: tuple[IdleListener, Recorder],
    dovecot_integration: Callable[..., EmailIntegration],
    settings,
) -> None:
    """Workers that never get through their queue must not keep push off for good."""
    _idle, _recorder = listener
    settings.IDLE_CONNECT_WHEN_QUEUED_AT_MOST = 0
    settings.IDLE_CONNECT_WAIT_MAX_SECONDS = 3
    busy = dovecot_integration(use_idle=False)
    note_passes_queued([busy.pk])
    integration = dovecot_integration(poll_interval_seconds=3600)
    started = time.monotonic()

    wait_for_status(integration, STATUS_LISTENING, timeout=20)

    assert time.monotonic() - started >= 2.5
    assert MailboxState.objects.get(integration=busy).pass_queued_at is not None


def test_the_listener_reconnects_after_the_server_restarts(
    listener: tuple[IdleListener, Recorder],
    dovecot: Dovecot,
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    _idle, recorder = listener
    integration = dovecot_integration(poll_interval_seconds=3600)
    wait_for_status(integration, STATUS_LISTENING)
    try:
        dovecot.crash()
        wait_for_status(integration, "reconnecting in")
    finally:
        dovecot.start()
    wait_for_status(integration, STATUS_LISTENING, timeout=60)

    dovecot.deliver(integration.incoming_username, make_email(subject="After the restart"))

    wait_until(lambda: recorder.count(integration.pk) >= 1, timeout=10)


def test_idle_is_renewed_before_the_server_drops_it(
    settings,
    listener: tuple[IdleListener, Recorder],
    dovecot: Dovecot,
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    settings.IDLE_REISSUE_SECONDS = 1
    idle, recorder = listener
    integration = dovecot_integration(poll_interval_seconds=3600)
    wait_for_status(integration, STATUS_LISTENING)
    first = idle.watches[integration.pk].idle_since
    wait_until(lambda: idle.watches[integration.pk].idle_since > first + 1.5, timeout=10)

    dovecot.deliver(integration.incoming_username, make_email(subject="Still listening"))

    wait_until(lambda: recorder.count(integration.pk) == 1, timeout=10)
    assert idle_status(integration) == STATUS_LISTENING


def test_turning_push_off_or_disabling_the_integration_stops_listening(
    listener: tuple[IdleListener, Recorder],
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    idle, _recorder = listener
    pushed = dovecot_integration()
    disabled = dovecot_integration()
    wait_for_status(pushed, STATUS_LISTENING)
    wait_for_status(disabled, STATUS_LISTENING)

    pushed.use_idle = False
    pushed.save()
    disabled.incoming_enabled = False
    disabled.save()

    wait_until(lambda: idle.listening == 0, timeout=10)
    assert idle_status(pushed) == idle_status(disabled) == ""


def test_pop3_and_opted_out_mailboxes_are_not_watched(
    listener: tuple[IdleListener, Recorder],
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    idle, _recorder = listener
    dovecot_integration(protocol="pop3")
    dovecot_integration(use_idle=False)
    watched = dovecot_integration()
    wait_for_status(watched, STATUS_LISTENING)
    assert set(idle.watches) == {watched.pk}


def test_mailidle_and_a_worker_turn_delivered_mail_into_records_within_seconds(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    """The whole chain as ops run it: Dovecot announces the email, mailidle queues a pass on
    Redis, the worker imports it. Polling is an hour away, so only IDLE can be this fast."""
    integration = dovecot_integration(poll_interval_seconds=3600)
    worker = workers.celery_worker()
    worker.start()
    mailidle = workers.manage("mailidle", "mailidle", ready_text="listening for new mail")
    mailidle.start()
    wait_for_status(integration, STATUS_LISTENING)

    latencies = []
    for n in range(20):
        dovecot.deliver(integration.incoming_username, make_email(subject=f"Idle {n:02d}"))
        delivered = time.monotonic()
        wait_until(
            lambda n=n: ServiceRecord.objects.filter(title=f"Idle {n:02d}").exists(),
            timeout=15,
            interval=0.02,
            message=f"email {n} did not become a record:\n{mailidle.output()[-2000:]}\n"
            f"{worker.output()[-3000:]}",
        )
        latencies.append(time.monotonic() - delivered)

    assert ServiceRecord.objects.count() == 20
    print(
        f"\nIMAP IDLE delivery to record, 20 emails: median {statistics.median(latencies):.2f} s,"
        f" worst {max(latencies):.2f} s"
    )


def test_mail_removed_by_a_pass_is_not_new_mail_but_a_delivery_is(
    dovecot: Dovecot, mailbox_account: tuple[str, str]
) -> None:
    """Dovecot follows the EXPUNGE of another session (a pass removing what it imported)
    with "* n RECENT": that must not ask for another pass, or a mailbox being drained asks
    after every chunk and floods the push queue (found by the many-mailboxes bench)."""
    username, password = mailbox_account
    dovecot.deliver(username, [make_email(subject=f"Old {n}") for n in range(5)])
    context = ssl.create_default_context(cadata=dovecot.ca_pem)
    listening = IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl_context=context)
    listening.login(username, password)
    listening.select_folder("INBOX")
    listening.idle()
    with IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl_context=context) as passing:
        passing.login(username, password)
        passing.select_folder("INBOX")
        uids = passing.search("ALL")[:3]
        passing.add_flags(uids, [DELETED], silent=True)
        passing.uid_expunge(uids)
        passing.logout()

    after_expunge: list[tuple] = []
    while (2, b"RECENT") not in after_expunge:  # what Dovecot says after the EXPUNGEs
        responses = listening.idle_check(timeout=10)
        assert responses, f"nothing after the EXPUNGEs but {after_expunge}"
        after_expunge += responses
    assert not has_new_mail(after_expunge)

    dovecot.deliver(username, make_email(subject="New"))
    after_delivery = listening.idle_check(timeout=10)
    assert has_new_mail(after_delivery)
    listening.idle_done()
    listening.logout()
