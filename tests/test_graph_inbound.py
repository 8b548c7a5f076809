"""Microsoft 365 mailboxes read through Microsoft Graph, against the tests' Graph server with
tokens from the tests' OAuth server: the pipeline's guarantees hold as they do for IMAP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.urls import reverse

from integrations.models import EmailIntegration, OAuthGrant
from mailworker.connection_tests import test_incoming_connection
from mailworker.mailboxes.factory import open_mailbox
from mailworker.models import GraphFolderState
from mailworker.pipeline.passes import run_pass
from records.models import Message, ProcessedEmail, Quarantine, ServiceRecord
from tests.graph_helpers import make_graph_integration
from tests.graph_server import GraphServer
from tests.mail import make_email
from tests.oauth_helpers import connect_with_test_client
from tests.test_connection_tests import run_test
from tests.workers import Workers, wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def graph_integration(graph: GraphServer) -> Callable[..., EmailIntegration]:
    def make(**options: Any) -> EmailIntegration:
        return make_graph_integration(graph, **options)

    return make


def numbered(end: int, prefix: str, start: int = 0) -> list[bytes]:
    """Emails `prefix start` to `prefix end-1`, from many people of many companies (below
    the flood limits)."""
    return [
        make_email(
            sender=f"User {n} <user{n}@customer{n % 50}.test>",
            subject=f"{prefix} {n}",
            body=f"Body {n}",
        )
        for n in range(start, end)
    ]


def imported_once(prefix: str, total: int) -> None:
    titles = sorted(ServiceRecord.objects.filter(title__startswith=prefix).values_list("title"))
    assert [t for (t,) in titles] == sorted(f"{prefix} {n}" for n in range(total))


# Reading and acking --------------------------------------------------------------------------


def test_a_pass_turns_messages_into_records_and_deletes_them(graph, graph_integration) -> None:
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(3, "Printer"))

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert report.counts["created"] == 3
    imported_once("Printer", 3)
    assert graph.count(mailbox) == 0
    assert graph.count(mailbox, "deleteditems") == 3  # deleted as Outlook deletes


def test_processed_messages_are_moved_to_the_folder_the_admin_named(
    graph, graph_integration
) -> None:
    integration = graph_integration(graph_processed_folder="Desk/Imported")
    mailbox = integration.incoming_username
    graph.add_folder(mailbox, "Desk/Imported")
    graph.deliver(mailbox, numbered(2, "Moved"))

    report = run_pass(integration=integration)

    assert report.counts["created"] == 2, report.errors
    assert graph.count(mailbox) == 0
    assert sorted(m.subject for m in graph.messages(mailbox, "Desk/Imported")) == [
        "Moved 0",
        "Moved 1",
    ]
    assert graph.count(mailbox, "deleteditems") == 0


def test_a_folder_given_by_path_is_read(graph, graph_integration) -> None:
    integration = graph_integration(incoming_folder="Support/Tickets")
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(1, "Nested"), folder="Support/Tickets")
    graph.deliver(mailbox, numbered(1, "Elsewhere"))

    report = run_pass(integration=integration)

    assert report.counts["created"] == 1, report.errors
    assert ServiceRecord.objects.get().title == "Nested 0"
    assert graph.count(mailbox) == 1  # the Inbox was not touched


def test_the_delta_link_is_kept_and_the_next_pass_asks_only_for_changes(
    graph, graph_integration
) -> None:
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(2, "Delta"))
    assert run_pass(integration=integration).counts["created"] == 2
    state = GraphFolderState.objects.get(integration=integration)
    assert "$deltatoken=" in state.delta_link

    graph.delta_requests.clear()
    graph.deliver(mailbox, numbered(3, "Delta", start=2))
    report = run_pass(integration=integration)

    assert report.counts["created"] == 1, report.errors
    assert graph.delta_requests[0] == "delta"  # from the stored link, not a full listing
    imported_once("Delta", 3)
    state.refresh_from_db()
    assert graph.delta_requests and "start" not in graph.delta_requests


def test_many_pages_and_batches_import_everything_once(graph, graph_integration) -> None:
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(250, "Paged"))

    report = run_pass(integration=integration, batch_size=60)

    assert report.counts["created"] == 250, report.errors
    imported_once("Paged", 250)
    assert graph.count(mailbox) == 0
    assert "next" in graph.delta_requests


def test_a_pass_ends_when_the_last_batch_was_full_and_nothing_came_since(
    graph, graph_integration
) -> None:
    """The pass asks again after a full batch; a round that lists nothing new ends it."""
    integration = graph_integration()
    graph.deliver(integration.incoming_username, numbered(4, "Even"))

    report = run_pass(integration=integration, batch_size=2)
    idle = run_pass(integration=integration, batch_size=2)

    assert report.counts["created"] == 4, report.errors
    assert idle.fetched == 0 and not idle.failed
    assert len(graph.delta_requests) <= 6


def test_an_expired_delta_link_resyncs_from_the_start_without_duplicates(
    graph, graph_integration
) -> None:
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(2, "Resync"))
    assert run_pass(integration=integration).counts["created"] == 2
    graph.deliver(mailbox, numbered(4, "Resync", start=2))
    graph.fail_next("DELETE message", 2)  # committed, never acked
    assert run_pass(integration=integration).failed
    assert graph.count(mailbox) == 2
    graph.expire_delta_links(mailbox)
    graph.delta_requests.clear()

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert graph.delta_requests[:2] == ["delta", "start"]  # 410, then a full listing
    assert report.counts["already processed"] == 2
    imported_once("Resync", 4)
    assert graph.count(mailbox) == 0


def test_a_crash_between_commit_and_ack_imports_once(graph, graph_integration) -> None:
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(5, "Crash"))
    graph.fail_next("DELETE message", 5)  # the server refuses every ack of this pass

    crashed = run_pass(integration=integration)

    assert crashed.failed
    assert "ErrorInternalServerError" in crashed.errors[0]
    assert ServiceRecord.objects.count() == 5
    assert graph.count(mailbox) == 5

    again = run_pass(integration=integration)

    assert not again.failed, again.errors
    assert again.counts["already processed"] == 5
    assert ServiceRecord.objects.count() == 5
    assert Message.objects.count() == 5
    assert graph.count(mailbox) == 0


def test_mime_bytes_are_stable_so_the_processed_marker_recognises_them(
    graph, graph_integration
) -> None:
    integration = graph_integration()
    raw = make_email(subject="Same bytes")
    graph.deliver(integration.incoming_username, raw)

    with open_mailbox(integration) as mailbox:
        first = [m.raw for m in mailbox.fetch(limit=10)]
    with open_mailbox(integration) as mailbox:
        second = [m.raw for m in mailbox.fetch(limit=10)]

    assert first == second == [raw]


def test_a_message_over_the_size_limit_keeps_only_its_headers(
    graph, graph_integration, settings
) -> None:
    settings.MAX_INCOMING_EMAIL_BYTES = 64 * 1024
    integration = graph_integration()
    big = make_email(
        subject="Huge scan",
        attachments=[("scan.pdf", "application/pdf", b"%PDF" + b"x" * 400_000)],
    )
    graph.deliver(integration.incoming_username, [big, make_email(subject="Small")])

    with open_mailbox(integration) as mailbox:
        fetched = {m.raw.split(b"Subject: ")[1][:4]: m for m in mailbox.fetch(limit=10)}
    report = run_pass(integration=integration)

    huge = fetched[b"Huge"]
    assert huge.oversized and huge.size == len(big)
    assert huge.raw == big[: big.index(b"\r\n\r\n") + 4]
    assert not fetched[b"Smal"].oversized
    assert report.counts["quarantined"] == 1 and report.counts["created"] == 1
    entry = Quarantine.objects.get()
    assert "limit" in entry.reason and len(entry.raw_email) < 2048
    assert graph.count(integration.incoming_username) == 0


# Two passes, throttling, tokens ---------------------------------------------------------------


def test_a_second_pass_stays_out_while_another_holds_the_mailbox(
    graph, graph_integration, workers: Workers
) -> None:
    integration = graph_integration()
    graph.deliver(integration.incoming_username, numbered(2, "Locked"))
    holder = workers.manage(
        "lock-holder",
        "shell",
        "-c",
        "import time\n"
        "from mailworker.locks import integration_lock\n"
        f"with integration_lock({integration.pk}) as taken:\n"
        "    print('holding' if taken else 'not taken', flush=True)\n"
        "    time.sleep(600)\n",
        ready_text="holding",
    )
    holder.start()
    requests_before = sum(graph.requests.values())

    report = run_pass(integration=integration)

    assert report.skipped and not report.failed
    assert sum(graph.requests.values()) == requests_before  # Graph was not even asked
    assert graph.count(integration.incoming_username) == 2

    holder.kill()
    report = run_pass(integration=integration)

    assert report.counts["created"] == 2, report.errors


def test_at_most_four_requests_are_in_flight_for_one_mailbox(graph, graph_integration) -> None:
    integration = graph_integration()
    graph.value_delay = 0.05
    graph.deliver(integration.incoming_username, numbered(40, "Parallel"))

    report = run_pass(integration=integration)

    assert report.counts["created"] == 40, report.errors
    assert 2 <= graph.most_in_flight(integration.incoming_username) <= 4


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_is_waited_out_as_retry_after_says(
    graph, graph_integration, status: int
) -> None:
    integration = graph_integration()
    graph.deliver(integration.incoming_username, numbered(2, "Throttled"))
    graph.throttle(2, status=status, retry_after=1)
    started = time.monotonic()

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert report.counts["created"] == 2
    assert time.monotonic() - started >= 2.0


def test_a_mailbox_that_stays_throttled_ends_the_pass_with_a_temporary_error(
    graph, graph_integration, settings
) -> None:
    settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS = 2
    integration = graph_integration()
    graph.deliver(integration.incoming_username, numbered(1, "Later"))
    graph.throttle(10, retry_after=1)

    report = run_pass(integration=integration)

    assert report.failed
    assert "keeps throttling" in report.errors[0] and "next pass goes on" in report.errors[0]
    assert not EmailIntegration.objects.get(pk=integration.pk).needs_reconnect
    graph.stop_throttling()
    assert run_pass(integration=integration).counts["created"] == 1


def test_a_token_graph_refuses_is_refreshed_once(graph, graph_integration) -> None:
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(1, "Before"))
    assert run_pass(integration=integration).counts["created"] == 1
    grants = graph.oauth.grants["client_credentials"]
    graph.oauth.expire_access_tokens(mailbox)  # revoked early: our cache still trusts it
    graph.deliver(mailbox, numbered(1, "After"))

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert report.counts["created"] == 1
    assert graph.oauth.grants["client_credentials"] == grants + 1


def test_a_delegated_mailbox_is_read_after_connecting(
    graph, client, admin_user, oauth_settings
) -> None:
    client.force_login(admin_user)
    integration = make_graph_integration(graph, app_only=False)
    page = connect_with_test_client(client, integration, oauth_settings)
    assert page.status_code == 200
    integration.refresh_from_db()
    graph.deliver(integration.incoming_username, numbered(1, "Delegated"))

    report = run_pass(integration=integration)

    assert report.counts["created"] == 1, report.errors


def test_a_refused_grant_marks_the_integration_needs_reconnect(
    graph, client, admin_user, oauth_settings
) -> None:
    client.force_login(admin_user)
    integration = make_graph_integration(graph, app_only=False)
    connect_with_test_client(client, integration, oauth_settings)
    integration.refresh_from_db()
    graph.oauth.revoke(integration.incoming_username)
    OAuthGrant.objects.filter(integration=integration).update(access_token_expires_at=None)
    integration = EmailIntegration.objects.get(pk=integration.pk)

    report = run_pass(integration=integration)

    assert report.failed and "Needs reconnect" in report.errors[0]
    assert EmailIntegration.objects.get(pk=integration.pk).needs_reconnect


# Test connection ----------------------------------------------------------------------------


def test_test_connection_counts_the_messages_waiting(graph, graph_integration) -> None:
    integration = graph_integration()
    graph.deliver(integration.incoming_username, numbered(3, "Waiting"))

    outcome = test_incoming_connection(integration=integration)

    assert outcome.ok, outcome.message
    assert "3 emails waiting" in outcome.message
    assert "Microsoft Graph" in outcome.message


def test_test_connection_names_the_missing_application_permission(
    graph, graph_integration, admin_client_for_graph
) -> None:
    integration = graph_integration()
    graph.app(integration.oauth_client_id).roles = {"Mail.Send"}

    page = run_test(
        admin_client_for_graph, reverse("integration_tests:incoming", args=[integration.pk])
    )

    text = page.content.decode()
    assert "Authentication failed" in text
    assert "ErrorAccessDenied" in text
    assert "application permission Mail.ReadWrite" in text
    assert "admin consent" in text


def test_test_connection_names_the_application_access_policy(graph, graph_integration) -> None:
    integration = graph_integration()
    graph.app(integration.oauth_client_id).allowed_mailboxes = {"someone.else@desk.test"}

    outcome = test_incoming_connection(integration=integration)

    assert not outcome.ok
    assert "application access policy does not include this mailbox" in outcome.message
    assert outcome.field == "oauth_client_secret"


def test_a_missing_folder_is_named_with_the_folders_there_are(graph, graph_integration) -> None:
    integration = graph_integration(incoming_folder="Tickets")

    outcome = test_incoming_connection(integration=integration)

    assert not outcome.ok
    assert "The folder 'Tickets' does not exist" in outcome.message
    assert "Inbox" in outcome.message


def test_an_unknown_mailbox_is_named(graph, graph_integration) -> None:
    integration = graph_integration()
    EmailIntegration.objects.filter(pk=integration.pk).update(incoming_username="nobody@desk.test")
    integration = EmailIntegration.objects.get(pk=integration.pk)

    outcome = test_incoming_connection(integration=integration)

    assert not outcome.ok
    assert "Microsoft Graph does not know the mailbox nobody@desk.test" in outcome.message


def test_the_processed_marker_is_keyed_on_the_immutable_id(graph, graph_integration) -> None:
    """Exchange writes the MIME anew for each $value, so the marker cannot be the bytes'
    hash: it is the message's immutable id in its mailbox."""
    from mailworker.pipeline.process import marker_key

    integration = graph_integration()
    mailbox = integration.incoming_username
    (message_id,) = graph.deliver(mailbox, make_email(subject="Marker"))
    run_pass(integration=integration)

    identity = f"graph:{mailbox.lower()}:{message_id}"
    assert ProcessedEmail.objects.filter(key=marker_key(b"", identity=identity)).exists()


def test_a_crash_between_commit_and_ack_imports_once_when_the_mime_is_written_anew(
    graph, graph_integration
) -> None:
    graph.mime_written_anew = True  # no two fetches of a message give the same bytes
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.deliver(mailbox, numbered(5, "Anew"))
    graph.fail_next("DELETE message", 5)

    crashed = run_pass(integration=integration)
    assert crashed.failed
    assert ServiceRecord.objects.count() == 5

    again = run_pass(integration=integration)

    assert not again.failed, again.errors
    assert again.counts["already processed"] == 5
    imported_once("Anew", 5)
    assert graph.count(mailbox) == 0


def test_a_message_keeps_its_id_when_moved_to_the_processed_folder(
    graph, graph_integration
) -> None:
    """The desk asks for immutable ids, so what it moved is still known by the id it had."""
    integration = graph_integration(graph_processed_folder="Imported")
    mailbox = integration.incoming_username
    graph.add_folder(mailbox, "Imported")
    delivered = graph.deliver(mailbox, numbered(2, "Kept id"))

    run_pass(integration=integration)

    assert sorted(m.id for m in graph.messages(mailbox, "Imported")) == sorted(delivered)


@pytest.fixture
def admin_client_for_graph(client, admin_user) -> Any:
    client.force_login(admin_user)
    return client


# Push: Graph change notifications ------------------------------------------------------------

PUBLIC = "https://desk.example.test"


@pytest.fixture
def eager_tasks(settings) -> Iterator[None]:
    """Tasks queued by name run at once, in the process that queues them (the live server's
    thread here), instead of going to a broker."""
    import mailworker.tasks  # noqa: F401 - registers the tasks queued by name
    from servicedesk.celery import app

    settings.INGEST_PARSE_PROCESSES = 0
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


@pytest.fixture
def public_desk(graph: GraphServer, live_server: Any, settings) -> GraphServer:
    """The desk at a public HTTPS address; its reverse proxy, in the tests, is the Graph
    server's route to the live server."""
    from django.core.cache import cache

    settings.PUBLIC_BASE_URL = PUBLIC
    graph.route(PUBLIC, live_server.url)
    cache.clear()  # push's debounce keys of earlier tests
    return graph


def notification(subscription_id: str, client_state: str, **extra: Any) -> dict[str, Any]:
    return {
        "value": [
            {
                "subscriptionId": subscription_id,
                "clientState": client_state,
                "changeType": "created",
                "resource": "Users/x/Messages/y",
                **extra,
            }
        ]
    }


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s")


def test_the_notification_url_answers_graphs_validation_token(client) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 1"

    answer = client.post(
        reverse("graph_notifications") + "?validationToken=" + token.replace(" ", "%20")
    )

    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain")
    assert answer.content.decode() == token


def test_without_a_public_https_address_there_is_no_subscription(
    graph, graph_integration, settings
) -> None:
    from mailworker.graph_subscriptions import keep_subscription

    settings.PUBLIC_BASE_URL = "http://desk.example.test"  # Graph calls only https
    integration = graph_integration()

    assert keep_subscription(integration=integration) is None
    assert not graph.subscriptions


@pytest.mark.django_db(transaction=True)
def test_a_notification_makes_the_new_email_a_record_within_seconds(
    public_desk, graph_integration, eager_tasks
) -> None:
    from mailworker.graph_subscriptions import keep_subscription

    graph = public_desk
    integration = graph_integration(poll_interval_seconds=3600)
    subscription = keep_subscription(integration=integration)  # Graph validates the URL here

    assert subscription is not None
    remote = graph.subscriptions[subscription.subscription_id]
    assert remote.notification_url == f"{PUBLIC}/graph/notifications/"
    assert (
        timedelta(minutes=4100) < remote.expires_at - datetime.now(UTC) <= timedelta(minutes=4230)
    )
    assert remote.client_state and remote.client_state not in subscription.client_state_sha256

    delivered = time.monotonic()
    graph.deliver(integration.incoming_username, make_email(subject="Pushed"))
    wait_for(lambda: ServiceRecord.objects.filter(title="Pushed").exists())
    print(f"\nGraph push, delivery to record: {time.monotonic() - delivered:.2f} s")

    def answers() -> list[int]:
        return [
            status
            for _url, status, body in graph.notifications
            if body["value"][0]["subscriptionId"] == subscription.subscription_id
        ]

    wait_for(lambda: bool(answers()))
    assert answers() == [202]
    assert graph.count(integration.incoming_username) == 0


@pytest.mark.django_db(transaction=True)
def test_a_notification_with_a_wrong_client_state_is_refused(
    public_desk, graph_integration, eager_tasks, client
) -> None:
    from mailworker.graph_subscriptions import keep_subscription

    graph = public_desk
    graph.notify_new_mail = False
    integration = graph_integration()
    subscription = keep_subscription(integration=integration)
    graph.deliver(integration.incoming_username, make_email(subject="Forged"))
    url = reverse("graph_notifications")

    forged = client.post(
        url,
        data=json.dumps(notification(subscription.subscription_id, "guessed")),
        content_type="application/json",
    )
    unknown = client.post(
        url,
        data=json.dumps(notification("no-such-subscription", "guessed")),
        content_type="application/json",
    )

    assert forged.status_code == unknown.status_code == 403
    assert not ServiceRecord.objects.exists()
    assert graph.count(integration.incoming_username) == 1

    right = graph.subscriptions[subscription.subscription_id].client_state
    genuine = client.post(
        url,
        data=json.dumps(notification(subscription.subscription_id, right)),
        content_type="application/json",
    )

    assert genuine.status_code == 202
    assert ServiceRecord.objects.filter(title="Forged").exists()


def test_no_subscription_when_graph_cannot_validate_the_notification_url(
    graph, graph_integration, settings
) -> None:
    from mailworker.graph_subscriptions import keep_subscriptions
    from mailworker.models import GraphSubscription

    settings.PUBLIC_BASE_URL = PUBLIC
    graph.route(PUBLIC, "http://127.0.0.1:9")  # nobody answers: creation must fail...
    graph_integration()
    assert keep_subscriptions() == 0  # ...as Graph refuses a URL it cannot validate
    assert not GraphSubscription.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_beat_renews_a_subscription_that_ends_within_a_day(public_desk, graph_integration) -> None:
    from django.utils import timezone

    from mailworker.graph_subscriptions import keep_subscription, keep_subscriptions
    from mailworker.models import GraphSubscription

    graph = public_desk
    integration = graph_integration()
    subscription = keep_subscription(integration=integration)
    assert keep_subscriptions() == 1
    assert graph.subscriptions[subscription.subscription_id].renewals == 0  # not yet due
    GraphSubscription.objects.filter(pk=subscription.pk).update(
        expires_at=timezone.now() + timedelta(hours=5)
    )

    assert keep_subscriptions() == 1

    subscription.refresh_from_db()
    assert graph.subscriptions[subscription.subscription_id].renewals == 1
    assert subscription.renewed_at is not None
    assert subscription.expires_at > timezone.now() + timedelta(hours=60)


@pytest.mark.django_db(transaction=True)
def test_lifecycle_notifications_renew_or_recreate_and_poll(
    public_desk, graph_integration, eager_tasks
) -> None:
    from mailworker.graph_subscriptions import keep_subscription
    from mailworker.models import GraphSubscription

    graph = public_desk
    integration = graph_integration()
    first = keep_subscription(integration=integration)

    assert graph.lifecycle(first.subscription_id, "reauthorizationRequired") == 202
    assert graph.subscriptions[first.subscription_id].renewals == 1

    graph.notify_new_mail = False
    graph.deliver(integration.incoming_username, make_email(subject="Missed while removed"))
    assert graph.lifecycle(first.subscription_id, "subscriptionRemoved") == 202

    second = GraphSubscription.objects.get(integration=integration)
    assert second.subscription_id != first.subscription_id
    assert second.subscription_id in graph.subscriptions
    assert ServiceRecord.objects.filter(title="Missed while removed").exists()

    graph.deliver(integration.incoming_username, make_email(subject="Missed"))
    assert graph.lifecycle(second.subscription_id, "missed") == 202
    assert ServiceRecord.objects.filter(title="Missed").exists()


def test_the_graph_server_keeps_what_sendmail_sent(graph, graph_integration) -> None:
    """For the Graph sender to come: sendMail takes base64 MIME as text/plain, answers 202
    and saves the message to Sent Items."""
    import base64

    from mailworker.mailboxes.graph_client import GraphClient

    integration = graph_integration()
    raw = make_email(sender=integration.incoming_username, to="jane@customer.test")
    client = GraphClient(integration, timeout=10)
    try:
        answer = client.request(
            "POST",
            client.user_url("/sendMail"),
            data=base64.b64encode(raw),
            headers={"Content-Type": "text/plain"},
            action="sending",
        )
    finally:
        client.close()

    assert answer.status_code == 202
    assert graph.sent[-1] == (integration.incoming_username, raw)
    assert [m.mime for m in graph.messages(integration.incoming_username, "sentitems")] == [raw]


def test_a_burst_of_notifications_makes_one_pass_and_one_after_it(
    graph, graph_integration, eager_tasks
) -> None:
    from django.core.cache import cache

    from mailworker.graph_push import queue_pass

    cache.clear()
    integration = graph_integration()
    graph.deliver(integration.incoming_username, numbered(1, "Burst"))

    for _notification in range(5):
        queue_pass(integration.pk)

    assert graph.delta_requests == ["start", "delta"]  # the pass, and the one after the burst
    assert ServiceRecord.objects.filter(title="Burst 0").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_workers_and_a_manual_fetchmail_on_one_graph_mailbox_import_each_email_once(
    graph, graph_integration, workers: Workers, oauth_settings
) -> None:
    total = 300
    integration = graph_integration()
    mailbox = integration.incoming_username
    graph.value_delay = 0.002  # passes long enough to overlap
    graph.deliver(mailbox, numbered(total, "Concurrent"))
    environment = {
        "MICROSOFT_GRAPH_URL": graph.url,
        "REQUESTS_CA_BUNDLE": str(oauth_settings.ca_path),
        "OAUTH_MICROSOFT_AUTHORITY_HOST": oauth_settings.microsoft_authority_host,
        "OAUTH_MICROSOFT_INSTANCE_DISCOVERY": "false",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    first = workers.celery_worker("first", **environment)
    second = workers.celery_worker("second", **environment)
    first.start()
    second.start()
    manual = workers.manage("fetchmail", "fetchmail", **environment)

    workers.send("mailworker.tasks.poll_integration", integration.pk)
    workers.send("mailworker.tasks.poll_integration", integration.pk)
    manual.start()

    assert manual.process is not None
    manual.process.wait(timeout=120)
    wait_until(lambda: graph.count(mailbox) == 0, timeout=120, message=manual.output()[-3000:])
    wait_until(lambda: ProcessedEmail.objects.count() == total, timeout=60)
    imported_once("Concurrent", total)
    assert Message.objects.count() == total
    assert graph.most_in_flight(mailbox) <= 4
    logs = first.output() + second.output() + manual.output()
    assert "status=skipped" in logs or "skipped, another pass" in logs
