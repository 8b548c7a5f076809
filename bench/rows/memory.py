"""Row 3: the worker's peak memory while it imports emails with a large attachment each.
It must not grow with the number of emails: a pass holds one fetch chunk at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from bench.corpus import large_emails
from bench.rows import Row

RSS_TARGET_MB = 300
MiB = 1024 * 1024


def peak_rss(bench) -> list[Row]:
    from django.db.models import Count, Sum

    from records.models import Original

    if not bench.primary:
        return []
    counts = [int(each) for each in bench.options.memory_emails.split(",")]
    attachment = bench.options.memory_mb * MiB
    # A 20 MB attachment is about 27 MB once base64-encoded, over the default 25 MB limit
    # (which would import its headers only): raise the limit so the whole email is imported.
    env = {"MAX_INCOMING_EMAIL_BYTES": str(64 * MiB)}
    peaks: dict[int, float] = {}
    details: dict[str, object] = {"attachment_mb": bench.options.memory_mb}
    for count in counts:
        integration = bench.integration(sending=False)
        for raw in large_emails(count, attachment_bytes=attachment, first=count * 1000):
            bench.dovecot.deliver(integration.incoming_username, raw)
        run = bench.fetchmail(integration, env=env)
        left = bench.dovecot.count(integration.incoming_username)
        if left:
            raise RuntimeError(f"{left} large emails left in the mailbox:\n{run.output[-2000:]}")
        peaks[count] = run.peak_rss_bytes / MiB
        kept = Original.objects.filter(integration=integration).aggregate(
            files=Count("pk"), raw=Sum("size"), stored=Sum("stored_size")
        )
        details[f"emails_{count}"] = {
            "peak_rss_mb": peaks[count],
            "pass_seconds": run.pass_seconds,
            "originals": kept,
        }
        # Gigabytes of attachments: not kept once measured.
        shutil.rmtree(Path(settings.MEDIA_ROOT), ignore_errors=True)
    worst = max(peaks.values())
    shown = ", ".join(f"{peak:.0f} MB at {count}" for count, peak in peaks.items())
    return [
        Row(
            name=f"3. Peak RSS of fetchmail, {bench.options.memory_mb} MB attachment each",
            result=shown,
            target=f"< {RSS_TARGET_MB} MB, flat",
            met=worst < RSS_TARGET_MB,
            details=details,
        )
    ]
