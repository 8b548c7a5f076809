"""GET /healthz: is the desk able to do its work? For load balancers and container checks."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection

from mailworker.models import WorkerHeartbeat
from mailworker.scheduling import oldest_overdue_poll

logger = logging.getLogger(__name__)
BROKER_TIMEOUT_SECONDS = 3
# Headers a reverse proxy adds: a request that carries one came from elsewhere, even when the
# connection itself comes from a proxy on this machine.
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


def check_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "not reachable"
        logger.warning("healthz: database unreachable: %s", exc)
        return Check(False, f"unreachable: {type(exc).__name__}")
    return Check(True, connection.vendor)


def check_broker() -> Check:
    broker = Connection(
        settings.CELERY_BROKER_URL,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        connect_timeout=BROKER_TIMEOUT_SECONDS,
    )
    try:
        broker.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)
        # Opening a channel is what actually talks to Redis; ensure_connection may be lazy.
        broker.default_channel.queue_declare(queue="celery", passive=False, durable=True)
    except Exception as exc:  # kombu wraps transport errors in many types
        logger.warning("healthz: broker unreachable: %s", exc)
        return Check(False, f"unreachable: {type(exc).__name__}")
    finally:
        broker.release()
    return Check(True, settings.CELERY_BROKER_URL.split("://", 1)[0])


def heartbeat_age_seconds() -> float | None:
    """Seconds since a worker last ran the heartbeat task; None when none ever did."""
    latest = WorkerHeartbeat.objects.order_by("-beat_at").values_list("beat_at", flat=True).first()
    if latest is None:
        return None
    return max(0.0, (timezone.now() - latest).total_seconds())


def is_direct_loopback_request(request: HttpRequest) -> bool:
    """True for a caller on this machine talking to the web directly (no proxy in between)."""
    if any(request.META.get(header) for header in FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def may_see_details(request: HttpRequest) -> bool:
    """Staff, and callers on this machine (see HEALTHZ_DETAILS_FROM_LOOPBACK), see what the
    desk runs on and which integration is late; anyone else only whether it is well."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return True
    return settings.HEALTHZ_DETAILS_FROM_LOOPBACK and is_direct_loopback_request(request)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = check_database()
    broker = check_broker()
    age = heartbeat_age_seconds() if database.ok else None
    max_age = timedelta(seconds=settings.HEARTBEAT_MAX_AGE_SECONDS).total_seconds()
    worker_ok = age is not None and age <= max_age
    overdue = oldest_overdue_poll() if database.ok else None
    max_delay = float(settings.POLL_MAX_DELAY_SECONDS)
    polls_ok = database.ok and (overdue is None or overdue.overdue_seconds <= max_delay)
    healthy = database.ok and broker.ok and worker_ok and polls_ok
    body = {
        "status": "ok" if healthy else "unhealthy",
        "database": {"ok": database.ok, "detail": database.detail},
        "broker": {"ok": broker.ok, "detail": broker.detail},
        "worker": {
            "ok": worker_ok,
            "last_heartbeat_age_seconds": None if age is None else round(age, 1),
            "max_age_seconds": max_age,
        },
        # The integration that has waited longest past its due poll: beat or the workers
        # are stuck or too few when this grows.
        "polling": {
            "ok": polls_ok,
            "oldest_overdue_integration": overdue.integration if overdue else None,
            "oldest_overdue_seconds": round(overdue.overdue_seconds, 1) if overdue else 0.0,
            "max_delay_seconds": max_delay,
        },
    }
    if not may_see_details(request):
        body = {"status": body["status"]}
    return JsonResponse(body, status=200 if healthy else 503)
