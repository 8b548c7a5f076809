"""Row G: a Microsoft 365 mailbox read through Microsoft Graph by one `fetchmail` pass (the
tests' Graph and token servers on loopback, in the suite's process; fetchmail in its own),
and a bare loop that only lists the folder by delta and downloads each `$value` with four
requests in flight, writing nothing: what HTTP on this machine allows."""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.corpus import mixed_mailbox
from bench.rows import Row

GRAPH_TARGET = 300.0  # emails/s, as the IMAP row's target


def _integration(bench, *, graph: Any, oauth: Any, mailbox: str) -> Any:
    from integrations.models import EmailIntegration
    from integrations.services import Secrets, save_integration
    from tests.smtpd import USERNAME

    graph.add_mailbox(mailbox)
    client = oauth.register_client("microsoft", app_mailbox=mailbox)
    fields = {
        "name": "Bench Graph",
        "incoming_enabled": True,
        "incoming_protocol": "microsoft_graph",
        "oauth_access": "app",
        "oauth_tenant": client.tenant,
        "oauth_client_id": client.client_id,
        "incoming_username": mailbox,
        # Sending as the IMAP row does, so notifications are composed as in production.
        "outgoing_enabled": True,
        "email_address": USERNAME,
        "smtp_host": bench.smtp.host,
        "smtp_port": bench.smtp.port_for("tls"),
        "smtp_encryption": "tls",
        "smtp_username": USERNAME,
        "ca_certificate": bench.smtp.ca_pem,
    }
    return save_integration(
        integration=EmailIntegration(**fields),
        secrets=Secrets(oauth_client_secret=client.secret, smtp_password=bench.smtp.password),
    )


def bare_read(*, graph: Any, oauth: Any, mailbox: str, ca_path: Path) -> int:
    """Delta pages of 100 ids, each message's MIME with four requests in flight."""
    client = next(c for c in oauth.clients.values() if c.app_mailbox == mailbox)
    token = oauth._issue(
        client=client,
        account=mailbox,
        refresh=False,
        scope="https://graph.microsoft.com/.default",
        nonce=None,
    )["access_token"]
    session = requests.Session()
    # Not session.verify: REQUESTS_CA_BUNDLE in the environment would win over it.
    session.trust_env = False
    session.verify = str(ca_path)
    session.headers["Authorization"] = f"Bearer {token}"
    base = f"{graph.url}/users/{mailbox}"
    url = f"{base}/mailFolders/inbox/messages/delta?$select=id,receivedDateTime"
    read = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        while url:
            page = session.get(url, headers={"Prefer": "odata.maxpagesize=100"}, timeout=30).json()
            ids = [item["id"] for item in page["value"] if "@removed" not in item]
            bodies = pool.map(
                lambda i: session.get(f"{base}/messages/{i}/$value", timeout=30).content, ids
            )
            read += sum(1 for body in bodies if body)
            url = page.get("@odata.nextLink", "")
    return read


def graph_ingest(bench) -> list[Row]:
    from records.models import Message
    from tests.graph_server import GraphServer
    from tests.oauth_server import OAuthServer

    count = bench.options.emails
    directory = Path(tempfile.mkdtemp(prefix="servicedesk-bench-graph-"))
    oauth = OAuthServer(directory)
    graph = GraphServer(oauth)
    try:
        mailbox = "support@graph.bench.test"
        integration = _integration(bench, graph=graph, oauth=oauth, mailbox=mailbox)
        graph.deliver(mailbox, mixed_mailbox(count))
        bare_seconds = float("inf")
        for _attempt in range(2):
            started = time.monotonic()
            read = bare_read(graph=graph, oauth=oauth, mailbox=mailbox, ca_path=oauth.ca_path)
            bare_seconds = min(bare_seconds, time.monotonic() - started)
            assert read == count, f"bare loop read {read} of {count}"
        before = Message.objects.filter(direction="in").count()
        run = bench.fetchmail(
            integration,
            env={
                "MICROSOFT_GRAPH_URL": graph.url,
                "REQUESTS_CA_BUNDLE": str(oauth.ca_path),
                "OAUTH_MICROSOFT_AUTHORITY_HOST": oauth.microsoft_authority_host,
                "OAUTH_MICROSOFT_INSTANCE_DISCOVERY": "false",
                "NO_PROXY": "127.0.0.1,localhost",
            },
        )
        left = graph.count(mailbox)
        logged = Message.objects.filter(direction="in").count() - before
        if left or logged != count:
            raise RuntimeError(
                f"Graph ingest incomplete: {left} left, {logged} of {count} logged\n"
                f"{run.output[-3000:]}"
            )
        requests_made = dict(graph.requests)
    finally:
        graph.shutdown()
        oauth.shutdown()
        shutil.rmtree(directory, ignore_errors=True)
    rate = count / run.pass_seconds
    limit = count / bare_seconds
    return [
        Row(
            name=f"G. Ingest {count} emails through Microsoft Graph, one fetchmail pass",
            result=f"{rate:.0f} emails/s ({run.pass_seconds:.2f} s)",
            target=f">= {GRAPH_TARGET:.0f} emails/s",
            met=rate >= GRAPH_TARGET,
            details={
                "emails": count,
                "pass_seconds": run.pass_seconds,
                "command_seconds": run.wall_seconds,
                "emails_per_second": rate,
                "peak_rss_bytes": run.peak_rss_bytes,
                "graph_requests": requests_made,
                "fetchmail_output": run.output.strip()[-500:],
            },
        ),
        Row(
            name="   Limit: bare delta + $value, 4 in flight",
            result=f"{limit:.0f} emails/s ({bare_seconds:.2f} s)",
            details={"emails": count, "seconds": bare_seconds, "ratio": rate / limit},
        ),
    ]
