"""Records fire their own events: the service that logs an incoming email sends
record_created or message_added, inside the caller's transaction, whoever calls it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from integrations.models import EmailIntegration
from records import signals
from records.models import ServiceRecord
from records.services import create_record, get_or_create_end_user, record_email_received

pytestmark = pytest.mark.django_db


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []

    def listener(name: str):
        def receive(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal")
            events.append((name, kwargs | {"in_transaction": connection.in_atomic_block}))

        return receive

    receivers = {
        signals.record_created: listener("record_created"),
        signals.message_added: listener("message_added"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    yield events
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def received(record: ServiceRecord, **options: Any):
    fields: dict[str, Any] = {
        "from_address": "jane@customer.test",
        "subject": "Printer",
        "text_body": "It jams.",
        "html_body": "",
        "to_addresses": ["help@desk.test"],
        "cc_addresses": [],
        "message_id": "<1@customer.test>",
        "in_reply_to": "",
        "references": "",
        "date": None,
        "raw_size": 100,
        "integration": EmailIntegration.objects.create(name="Desk", incoming_enabled=True)
        if not EmailIntegration.objects.exists()
        else EmailIntegration.objects.get(),
        "sender_verified": None,
        "authentication": "",
        "automatic": False,
        "new_record": False,
    }
    with transaction.atomic():
        return record_email_received(record=record, **(fields | options))


@pytest.fixture
def record() -> ServiceRecord:
    requester, _ = get_or_create_end_user(email="jane@customer.test")
    return create_record(title="Printer", description="It jams.", requester=requester)


def test_the_first_email_of_a_new_record_fires_record_created_in_the_transaction(
    record: ServiceRecord, heard: list
) -> None:
    message = received(record, new_record=True, automatic=True, acknowledge=False)

    assert heard == [
        (
            "record_created",
            {
                "record": record,
                "message": message,
                "automatic": True,
                "acknowledge": False,
                "in_transaction": True,
            },
        )
    ]


def test_a_reply_fires_message_added(record: ServiceRecord, heard: list) -> None:
    message = received(record)

    assert heard == [
        ("message_added", {"message": message, "automatic": False, "in_transaction": True})
    ]


def test_an_internal_note_or_an_agents_own_email_fires_nothing(
    record: ServiceRecord, heard: list, admin_user: Any
) -> None:
    note = received(record, internal=True)
    received(record, author=admin_user, message_id="<2@desk.test>")

    assert heard == []
    assert note.is_internal
