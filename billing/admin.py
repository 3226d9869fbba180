from django.contrib import admin

from billing.models import (
    BudgetAlert,
    DailyUsage,
    KeyLimits,
    ModelPrice,
    Plan,
    Statement,
    StatementLine,
    TenantBilling,
    UsageRecord,
)
from llmsite.admin import ReadOnlyAdmin

LIMIT_COLUMNS = [
    "rpm",
    "tpm",
    "tokens_per_day",
    "tokens_per_month",
    "max_concurrent",
    "monthly_budget",
]


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", *LIMIT_COLUMNS, "soft_budget_percent"]
    search_fields = ["name"]


@admin.register(TenantBilling)
class TenantBillingAdmin(admin.ModelAdmin):
    list_display = ["tenant", "plan", *LIMIT_COLUMNS, "billing_email"]
    list_filter = ["plan"]
    search_fields = ["tenant__slug"]
    autocomplete_fields = ["tenant"]


@admin.register(KeyLimits)
class KeyLimitsAdmin(admin.ModelAdmin):
    list_display = ["api_key", *LIMIT_COLUMNS]
    search_fields = ["api_key__prefix", "api_key__tenant__slug"]
    raw_id_fields = ["api_key"]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["model", "prompt_per_million", "completion_per_million", "updated_at"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "tenant",
        "endpoint",
        "model_id",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "latency_ms",
    ]
    list_filter = ["tenant", "status", "endpoint", "model_id"]
    search_fields = ["request_id", "end_user"]
    date_hierarchy = "created_at"


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    list_display = [
        "day",
        "tenant",
        "model_id",
        "key_prefix",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    ]
    list_filter = ["tenant", "model_id"]
    date_hierarchy = "day"


class StatementLineInline(admin.TabularInline):
    model = StatementLine
    extra = 0
    can_delete = False
    readonly_fields = ["model_id", "requests", "prompt_tokens", "completion_tokens", "cost"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    list_display = [
        "month",
        "tenant",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total",
        "closed_at",
    ]
    list_filter = ["tenant", "month"]
    inlines = [StatementLineInline]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["month", "tenant", "spent", "budget", "created_at"]
    list_filter = ["tenant"]
