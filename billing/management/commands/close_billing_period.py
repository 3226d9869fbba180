from datetime import UTC, date, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from billing.services import month_bounds, statement_close


def _month(value: str | None) -> date:
    if value is None:  # the previous month, in UTC
        first_of_this = datetime.now(UTC).date().replace(day=1)
        return month_bounds(first_of_this - timedelta(days=1))[0]
    try:
        return date.fromisoformat(f"{value}-01")
    except ValueError:
        raise CommandError(f"--month must look like 2026-01, got {value!r}") from None


class Command(BaseCommand):
    help = "Write one statement per tenant for a month (default: last month). Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--month", help="YYYY-MM (UTC)")

    def handle(self, *args, month=None, **options):
        first = _month(month)
        written = 0
        for tenant in Tenant.objects.all():
            statement = statement_close(tenant=tenant, month=first)
            if statement is not None:
                written += 1
                self.stdout.write(f"{tenant.slug} {first:%Y-%m}: {statement.total}")
        self.stdout.write(f"{written} statement(s) for {first:%Y-%m}")
