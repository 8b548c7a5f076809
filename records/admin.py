"""Django admin for records, statuses, rules and people, until the agent screens exist.

EmailIntegration is deliberately not registered: the stock admin would render its secrets
back into the page. It is managed at Settings > Email.
"""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from records.models import (
    AdminGroup,
    Category,
    EmailRule,
    EmailRuleCondition,
    Message,
    Quarantine,
    ServiceRecord,
    Status,
    User,
)

admin.site.register(User, UserAdmin)


@admin.register(Status)
class StatusAdmin(admin.ModelAdmin):
    list_display = ("name", "order", "is_closed")
    list_editable = ("order", "is_closed")


admin.site.register(AdminGroup)
admin.site.register(Category)


class MessageInline(admin.StackedInline):
    model = Message
    extra = 0
    fields = ("direction", "from_address", "subject", "text_body", "created_at")
    readonly_fields = fields
    can_delete = False


@admin.register(ServiceRecord)
class ServiceRecordAdmin(admin.ModelAdmin):
    list_display = (
        "display_number",
        "title",
        "status",
        "requester",
        "assigned_admin",
        "updated_at",
    )
    list_filter = ("status", "priority", "group")
    search_fields = ("=id", "title", "requester__email")
    raw_id_fields = ("requester", "assigned_admin")
    inlines = [MessageInline]


class EmailRuleConditionInline(admin.TabularInline):
    model = EmailRuleCondition
    extra = 1


@admin.register(EmailRule)
class EmailRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "order", "is_active", "stop_processing")
    list_editable = ("order", "is_active")
    inlines = [EmailRuleConditionInline]


@admin.register(Quarantine)
class QuarantineAdmin(admin.ModelAdmin):
    list_display = ("received_at", "from_address", "subject", "reason", "integration")
    readonly_fields = (
        "integration",
        "reason",
        "from_address",
        "subject",
        "message_id",
        "received_at",
    )
    exclude = ("raw_email",)
