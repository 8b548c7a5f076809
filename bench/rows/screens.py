"""Row 6: the agents' screens with a full database: the records list and a record page
with a long message log, timed in-process with Django's test Client (server time: no
network, no browser), the median of several requests after a warm-up."""

from __future__ import annotations

import statistics
import time

from django.db import transaction
from django.test import Client

from bench.rows import Row

LIST_TARGET_MS = 100.0
PAGE_TARGET_MS = 200.0
REQUESTS = 9
END_USERS = 1000
LOG_LENGTH = 200


def _fill(records: int) -> int:
    """Bulk-create `records` records from END_USERS end users, and one record with a
    message log of LOG_LENGTH messages (half incoming with HTML, a few attachments).
    Returns the number of the long record."""
    from records.models import Attachment, Direction, Message, ServiceRecord, Status, User

    statuses = list(Status.objects.all())
    with transaction.atomic():
        users = User.objects.bulk_create(
            User(username=f"enduser{n}", email=f"enduser{n}@customer.test", password="!")
            for n in range(END_USERS)
        )
        ServiceRecord.objects.bulk_create(
            (
                ServiceRecord(
                    title=f"Printer on floor {n % 9} prints blank pages ({n})",
                    description="It prints only blank pages since this morning.",
                    requester=users[n % END_USERS],
                    status=statuses[n % len(statuses)],
                )
                for n in range(records)
            ),
            batch_size=5000,
        )
        long_record = ServiceRecord.objects.order_by("-pk").first()
        assert long_record is not None
        messages = Message.objects.bulk_create(
            Message(
                record=long_record,
                direction=Direction.INCOMING if n % 2 == 0 else Direction.OUTGOING,
                from_address=long_record.requester.email,
                to_addresses=["support@desk.test"],
                subject=f"Re: Printer on floor 3 ({n})",
                text_body="Still broken.\n\n> It prints only blank pages.\n" * 5,
                html_body="<p>Still <b>broken</b>.</p><blockquote>It prints only blank "
                "pages.</blockquote>"
                if n % 2 == 0
                else "",
                message_id=f"<m{n}@customer.test>",
            )
            for n in range(LOG_LENGTH)
        )
        Attachment.objects.bulk_create(
            Attachment(
                message=message,
                file=f"attachments/{long_record.pk}/{message.pk}/log.txt",
                filename="log.txt",
                content_type="text/plain",
                size=2048,
            )
            for message in messages[::10]
        )
    return long_record.pk


def _agent_client() -> Client:
    from django.contrib.auth.models import Permission

    from records.models import User

    agent = User.objects.create_user(
        username="bench-agent", email="agent@desk.test", password=None, is_staff=True
    )
    agent.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="records",
            codename__in=["view_servicerecord", "change_servicerecord"],
        )
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(agent)
    return client


def median_ms(client: Client, path: str) -> tuple[float, list[float]]:
    response = client.get(path)  # warm-up: templates compiled, connections opened
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code}")
    timings = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return statistics.median(timings), timings


def screen_times(bench) -> list[Row]:
    count = bench.options.records
    started = time.monotonic()
    long_record = _fill(count)
    fill_seconds = time.monotonic() - started
    client = _agent_client()
    list_ms, list_all = median_ms(client, "/records/")
    page_ms, page_all = median_ms(client, f"/records/{long_record}/")
    return [
        Row(
            name=f"6. Records list, {count:,} records",
            result=f"{list_ms:.0f} ms",
            target=f"< {LIST_TARGET_MS:.0f} ms",
            met=list_ms < LIST_TARGET_MS,
            details={"median_ms": list_ms, "all_ms": list_all, "fill_seconds": fill_seconds},
        ),
        Row(
            name=f"   Record page, {LOG_LENGTH} messages",
            result=f"{page_ms:.0f} ms",
            target=f"< {PAGE_TARGET_MS:.0f} ms",
            met=page_ms < PAGE_TARGET_MS,
            details={"median_ms": page_ms, "all_ms": page_all},
        ),
    ]
