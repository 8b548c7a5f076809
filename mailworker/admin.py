"""The mail engine in the admin site: notification switches, and the outbox to see what was
sent, what waits and why something failed."""

from django.contrib import admin

from mailworker.models import MailboxState, NotificationSettings, OutboxEmail


@admin.register(NotificationSettings)
class NotificationSettingsAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return not NotificationSettings.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OutboxEmail)
class OutboxEmailAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "kind",
        "state",
        "recipients",
        "subject",
        "attempts",
        "last_error",
    )
    list_filter = ("state", "kind", "is_automatic")
    search_fields = ("subject", "recipient", "message_id")
    exclude = ("raw_message", "attached_email")
    readonly_fields = [
        field.name
        for field in OutboxEmail._meta.fields
        if field.name not in ("raw_message", "attached_email")
    ]

    @admin.display(description="to")
    def recipients(self, obj: OutboxEmail) -> str:
        return ", ".join(obj.to_addresses)

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(MailboxState)
class MailboxStateAdmin(admin.ModelAdmin):
    """What the mail engine last saw of each integration: read only, the engine writes it."""

    list_display = (
        "integration",
        "last_polled_at",
        "last_success_at",
        "poll_failures",
        "consecutive_failures",
        "idle_status",
        "last_error",
    )
    list_select_related = ("integration",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
