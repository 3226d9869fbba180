from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from accounts.services import api_key_issue, tenant_get_or_create
from llmsite.errors import APIError


class Command(BaseCommand):
    help = "Create an API key for a tenant (created if needed). The raw key is the last line."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--name", default="", help="a label for the key")
        parser.add_argument(
            "--scopes",
            default="inference",
            help="comma list of inference, usage:read, keys:manage (default: inference)",
        )

    def handle(self, *args, tenant: str, name: str, scopes: str, **options):
        if slugify(tenant) != tenant:
            raise CommandError(
                f"--tenant must be a slug (letters, digits, - and _), got {tenant!r}"
            )
        tenant_row = tenant_get_or_create(slug=tenant)
        try:
            key, raw = api_key_issue(
                tenant=tenant_row, name=name, scopes=[s for s in scopes.split(",") if s]
            )
        except APIError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Created key {key.prefix}… for tenant {tenant_row.slug}; store it now.")
        self.stdout.write(raw)
