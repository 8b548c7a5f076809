"""Row 7: the incoming email log's screen with 100,000 rows: its first page, and a page far
down the log (keyset paging), timed in-process with Django's test Client like row 6."""

from __future__ import annotations

import time

from django.db import transaction
from django.test import Client

from bench.rows import Row
from bench.rows.screens import median_ms

LOG_ROWS = 100_000
TARGET_MS = 100.0


def _fill() -> None:
    from integrations.models import EmailIntegration
    from records.models import ProcessedEmail

    integration = EmailIntegration.objects.create(name="bench-incoming-log")
    with transaction.atomic():
        ProcessedEmail.objects.bulk_create(
            (
                ProcessedEmail(
                    integration=integration,
                    key=f"bench-log-{n}",
                    outcome="created" if n % 3 else "ignored",
                    from_address=f"user{n % 500}@customer.test",
                    subject=f"Printer on floor {n % 9} ({n})",
                    size=2000 + n % 5000,
                )
                for n in range(LOG_ROWS)
            ),
            batch_size=5000,
        )


def _reader() -> Client:
    from django.contrib.auth.models import Permission

    from records.models import User

    reader = User.objects.create_user(
        username="bench-log-reader", email="reader@desk.test", password=None, is_staff=True
    )
    reader.user_permissions.set(
        Permission.objects.filter(content_type__app_label="records", codename="view_processedemail")
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(reader)
    return client


def incoming_log_times(bench) -> list[Row]:
    started = time.monotonic()
    _fill()
    fill_seconds = time.monotonic() - started
    client = _reader()
    first_ms, first_all = median_ms(client, "/incoming/")
    # 20 pages down: follow the cursor, then time that page.
    from urllib.parse import quote

    from mailworker.incoming_log import log_rows, page_of

    cursor = ""
    for _ in range(20):
        cursor = page_of(log_rows().filter(outcome="created"), cursor=cursor).next_cursor
    path = f"/incoming/?outcome=created&after={quote(cursor)}"
    deep_ms, deep_all = median_ms(client, path)
    return [
        Row(
            name=f"7. Incoming log, {LOG_ROWS:,} rows",
            result=f"{first_ms:.0f} ms",
            target=f"< {TARGET_MS:.0f} ms",
            met=first_ms < TARGET_MS,
            details={"median_ms": first_ms, "all_ms": first_all, "fill_seconds": fill_seconds},
        ),
        Row(
            name="   Incoming log, filtered, page 21",
            result=f"{deep_ms:.0f} ms",
            target=f"< {TARGET_MS:.0f} ms",
            met=deep_ms < TARGET_MS,
            details={"median_ms": deep_ms, "all_ms": deep_all},
        ),
    ]
