from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from accounts.models import ApiKey, Tenant

MONEY: dict[str, Any] = {"max_digits": 18, "decimal_places": 8}


class Limits(models.Model):
    """Every limit is optional: empty means unlimited."""

    rpm = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveBigIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    monthly_budget = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)]
    )

    LIMIT_FIELDS = (
        "rpm",
        "tpm",
        "tokens_per_day",
        "tokens_per_month",
        "max_concurrent",
        "monthly_budget",
    )

    class Meta:
        abstract = True


class Plan(Limits):
    name = models.SlugField(max_length=64, unique=True)
    soft_budget_percent = models.PositiveSmallIntegerField(
        default=80,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Warn (email + audit row) when this share of the monthly budget is spent.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TenantBilling(Limits):
    """A tenant's plan plus per-tenant overrides (a set field wins over the plan's)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, null=True, blank=True)
    billing_email = models.EmailField(blank=True)

    def __str__(self) -> str:
        return f"{self.tenant} on {self.plan or 'no plan'}"


class KeyLimits(Limits):
    """Limits of one key; they can only tighten the tenant's."""

    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="limits")

    def __str__(self) -> str:
        return f"limits of {self.api_key}"


class ModelPrice(models.Model):
    model = models.OneToOneField(
        "inference.LLMModel", on_delete=models.CASCADE, related_name="price"
    )
    prompt_per_million = models.DecimalField(
        **MONEY, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    completion_per_million = models.DecimalField(
        **MONEY, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.model}: {self.prompt_per_million}/{self.completion_per_million} per 1M"


class QuotaCounter(models.Model):
    """The database path's counters (without Redis): one row per scope and window."""

    key = models.CharField(max_length=200, primary_key=True)
    value = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


class ConcurrencyLease(models.Model):
    """An in-flight request holding a concurrency slot (database path); leases expire."""

    scope = models.CharField(max_length=200)
    # The reservation's server-generated lease id, not the client's X-Request-Id.
    request_id = models.CharField(max_length=128)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["scope", "expires_at"])]
        constraints = [
            models.UniqueConstraint(fields=["scope", "request_id"], name="one_lease_per_request")
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.request_id}"


class UsageRecord(models.Model):
    """One row per /v1 request, written when the request ends, however it ends."""

    class Status(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        CANCELLED = "cancelled"
        REJECTED = "rejected"

    # Every request inserts one of these, and each index is one more write per
    # insert: tenant and api_key are served by the two (…, created_at) indexes
    # below, which lead with them, so they get none of their own.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="usage_records", db_index=False
    )
    api_key = models.ForeignKey(
        ApiKey,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_records",
        db_index=False,
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_records",
        help_text="Set when a person called with a JWT.",
    )
    endpoint = models.CharField(max_length=64)
    model_id = models.CharField(max_length=128, blank=True)
    end_user = models.CharField(max_length=256, blank=True, help_text="The request's `user` field.")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    status = models.CharField(max_length=16, choices=Status.choices)
    error_code = models.CharField(max_length=64, blank=True)
    # Indexed in Meta: db_index=True would add a second, LIKE-prefix index on PostgreSQL.
    request_id = models.CharField(max_length=128)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["request_id"], name="billing_usage_request_id"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class DailyUsage(models.Model):
    """Per tenant, day (UTC), model and key: kept when raw records are pruned."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="daily_usage")
    day = models.DateField()
    model_id = models.CharField(max_length=128, blank=True)
    key_prefix = models.CharField(max_length=16, blank=True, help_text="Empty for JWT calls.")
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))

    class Meta:
        ordering = ["day", "model_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "day", "model_id", "key_prefix"],
                name="one_rollup_per_day_model_key",
            )
        ]
        indexes = [models.Index(fields=["tenant", "day"])]

    def __str__(self) -> str:
        return f"{self.tenant} {self.day} {self.model_id}"


class Statement(models.Model):
    """A tenant's bill for one calendar month (UTC). Written by close_billing_period."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="statements")
    month = models.DateField(help_text="First day of the month.")
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    total = models.DecimalField(**MONEY, default=Decimal(0))
    closed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-month", "tenant"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month"], name="one_statement_per_month")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.month:%Y-%m}: {self.total}"


class StatementLine(models.Model):
    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="lines")
    model_id = models.CharField(max_length=128)
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))

    class Meta:
        ordering = ["model_id"]

    def __str__(self) -> str:
        return f"{self.statement}: {self.model_id} {self.cost}"


class BudgetAlert(models.Model):
    """The soft-budget warning sent for a tenant and month (at most one)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budget_alerts")
    month = models.DateField()
    spent = models.DecimalField(**MONEY)
    budget = models.DecimalField(max_digits=14, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month"], name="one_budget_alert_per_month")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.month:%Y-%m}: {self.spent}/{self.budget}"
