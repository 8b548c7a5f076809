"""Row 4: notifications through the outbox to aiosmtpd on loopback: queued one an event
(each in its own transaction, as records' signals do), then sent by send_due."""

from __future__ import annotations

import time

from django.db import transaction

from bench.rows import Row

SECONDS_TARGET = 10.0


def send_notifications(bench) -> list[Row]:
    from mailworker.delivery import send_due
    from mailworker.models import OutboxEmail
    from mailworker.outbound.queue import queue_email

    count = bench.options.notifications
    integration = bench.integration()
    bench.smtp.clear()
    OutboxEmail.objects.all().delete()
    started = time.monotonic()
    for n in range(count):
        with transaction.atomic():
            queue_email(
                kind=OutboxEmail.Kind.NOTIFICATION,
                to=[f"person{n}@customer.test"],
                subject=f"[#{n}] Your request was received",
                text=f"We received your request #{n} and will answer soon.\n",
                html=f"<p>We received your request #{n} and will answer soon.</p>",
                integration=integration,
            )
    queued = time.monotonic()
    report = send_due()
    finished = time.monotonic()
    delivered = len(bench.smtp.messages)
    if report.sent != count or delivered != count:
        raise RuntimeError(f"sent {report.sent}, server received {delivered} of {count}")
    total = finished - started
    return [
        Row(
            name=f"4. Outbox: {count} notifications to aiosmtpd",
            result=f"{total:.2f} s (queue {queued - started:.2f} + send {finished - queued:.2f})",
            target=f"< {SECONDS_TARGET:.0f} s",
            met=total < SECONDS_TARGET,
            details={
                "notifications": count,
                "queue_seconds": queued - started,
                "send_seconds": finished - queued,
                "total_seconds": total,
            },
        )
    ]
