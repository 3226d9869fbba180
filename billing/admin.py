from django.contrib import admin

from billing.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "endpoint",
        "model_id",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
    ]
    list_filter = ["tenant", "status", "endpoint", "model_id"]
    search_fields = ["request_id", "end_user"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
