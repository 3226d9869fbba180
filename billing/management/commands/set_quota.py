from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey, Tenant
from billing.models import Plan
from billing.services import UNLIMITED, limits_set, plan_assign

LIMITS = {
    "rpm": "rpm",
    "tpm": "tpm",
    "tokens_per_day": "tokens_per_day",
    "tokens_per_month": "tokens_per_month",
    "concurrent": "max_concurrent",
    "budget": "monthly_budget",
}


def _limit(value: str, *, money: bool = False):
    """A number, or 'none' to clear the limit (unlimited)."""
    if value.lower() in {"none", "unlimited"}:
        return UNLIMITED
    try:
        number = Decimal(value) if money else int(value)
    except (ValueError, InvalidOperation):
        raise CommandError(f"not a number: {value!r}") from None
    if number < 0:
        raise CommandError(f"limits cannot be negative: {value}")
    return number


class Command(BaseCommand):
    help = (
        "Set a tenant's limits (overrides on its plan), or with --key-prefix one key's. "
        "Give 'none' to clear a limit."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--key-prefix", default=None)
        parser.add_argument("--plan", default=None, help="assign this plan (by name)")
        parser.add_argument("--rpm")
        parser.add_argument("--tpm")
        parser.add_argument("--tokens-per-day")
        parser.add_argument("--tokens-per-month")
        parser.add_argument("--concurrent")
        parser.add_argument("--budget", help="monthly budget in money, e.g. 25.00")

    def handle(self, *args, tenant, key_prefix, plan, **opts):
        tenant_row = Tenant.objects.filter(slug=tenant).first()
        if tenant_row is None:
            raise CommandError(f"no tenant {tenant!r}")
        key = None
        if key_prefix:
            key = ApiKey.objects.filter(tenant=tenant_row, prefix=key_prefix).first()
            if key is None:
                raise CommandError(f"tenant {tenant} has no key with prefix {key_prefix!r}")
        if plan:
            if key is not None:
                raise CommandError("--plan applies to a tenant, not to a key")
            plan_row = Plan.objects.filter(name=plan).first()
            if plan_row is None:
                raise CommandError(f"no plan {plan!r}")
            plan_assign(tenant=tenant_row, plan=plan_row)
        values = {
            field: _limit(opts[opt], money=opt == "budget")
            for opt, field in LIMITS.items()
            if opts.get(opt) is not None
        }
        try:
            row = limits_set(tenant=tenant_row, api_key=key, **values)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        target = f"key {key.prefix}" if key else f"tenant {tenant}"
        shown = ", ".join(
            f"{field}={getattr(row, field)}"
            for field in LIMITS.values()
            if getattr(row, field) is not None
        )
        self.stdout.write(f"Limits of {target}: {shown or 'unlimited (plan applies)'}")
