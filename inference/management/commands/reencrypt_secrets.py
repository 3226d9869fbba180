"""Rewrite every encrypted secret under the first LLMSITE_FIELD_KEY (after a key rotation)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from inference.models import LLMModel


class Command(BaseCommand):
    help = (
        "Re-encrypt remote backend API keys under the first LLMSITE_FIELD_KEY; "
        "run after putting a new key first, then drop the old one."
    )

    def handle(self, *args, **options):
        count = 0
        for model in LLMModel.objects.exclude(remote_api_key=""):
            # Read through every key, written under the first one.
            model.save(update_fields=["remote_api_key"])
            count += 1
        self.stdout.write(f"Re-encrypted {count} secret(s).")
