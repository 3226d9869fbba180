import getpass
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from accounts.models import Role
from accounts.services import user_create_or_attach
from llmsite.errors import APIError


class Command(BaseCommand):
    stealth_options = ("stdin",)
    help = (
        "Create a user (or attach an existing one) to a tenant with a role. The password is "
        "read from stdin when it is piped, else prompted for; never from the command line."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--tenant", required=True, help="tenant slug (created if needed)")
        parser.add_argument("--role", choices=Role.values, default=Role.MEMBER)

    def handle(self, *args, username, tenant, role, **options):
        if slugify(tenant) != tenant:
            raise CommandError(f"--tenant must be a slug, got {tenant!r}")
        password = self._password()
        try:
            user, membership, created = user_create_or_attach(
                username=username, tenant_slug=tenant, role=role, password=password
            )
        except ValidationError as exc:
            raise CommandError("Password rejected: " + " ".join(exc.messages)) from exc
        except APIError as exc:
            raise CommandError(exc.message) from exc
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} user {user.get_username()}: {membership.role} of {tenant}")

    def _password(self) -> str:
        stdin = self.stdin if hasattr(self, "stdin") else sys.stdin
        if stdin.isatty():
            first = getpass.getpass("Password: ")
            if first != getpass.getpass("Password (again): "):
                raise CommandError("Passwords do not match.")
            return first
        return stdin.readline().rstrip("\n")

    def execute(self, *args, **options):
        self.stdin = options.pop("stdin", sys.stdin)
        return super().execute(*args, **options)
