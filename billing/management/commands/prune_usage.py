from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.services import usage_prune


class Command(BaseCommand):
    help = "Delete raw usage records older than N days (daily roll-ups are kept)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=None, help="default: LLMSITE_USAGE_RETENTION_DAYS"
        )

    def handle(self, *args, days=None, **options):
        days = days if days is not None else settings.LLMSITE_USAGE_RETENTION_DAYS
        if days is None or days < 1:
            raise CommandError("give --days N (N >= 1) or set LLMSITE_USAGE_RETENTION_DAYS")
        deleted = usage_prune(older_than_days=days)
        self.stdout.write(f"Deleted {deleted} usage record(s) older than {days} days")
