"""Domain events of records. `records` only says what happened; the mail engine listens and
decides what to send (DESIGN.md: imports point one way). Every signal is sent inside the
transaction of the change, so what a receiver writes (the outbox) commits with it. Each is
sent by the service of records/services.py that makes the change: record_created and
message_added by record_email_received, record_details_changed by change_record_details,
agent_replied by post_agent_reply, record_escalated by escalate_overdue_records and
escalate_record; open_record_for_requester sends record_created (message None) for a record
an agent opened by hand; and account_email_requested by records/accounts.py.
"""

from django.dispatch import Signal

# record: ServiceRecord; message: the first Message or None; automatic: bool; acknowledge:
# bool, False when the requester must not be told (an unverified or flooding sender)
record_created = Signal()
# message: an incoming Message added to an existing record's log; automatic: bool (an
# auto-reply or a bounce, which never triggers a notification)
message_added = Signal()
# record, actor (User or None), changes: dict[field name, (old display, new display)]
record_details_changed = Signal()
# message: the outgoing Message an agent wrote; integration_id: int | None (None: the
# usual sending integration)
agent_replied = Signal()
# record: a record whose due date has passed, or that an agent escalated (actor: that agent;
# None when the due date passed)
record_escalated = Signal()
# user: the User the email is for; kind: "invitation" or "password_reset"; link: the absolute
# set-password link. Sent by records.accounts (invite_user, send_invitation,
# send_password_reset); the mail engine queues the email through the sending integration.
account_email_requested = Signal()
