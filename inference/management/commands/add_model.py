from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from inference.chat_formats import AUTO, CHAT_FORMATS
from inference.engine import ModelLoadError, check_gguf
from inference.management.routing_args import add_routing_arguments, routing_values
from inference.model_admin import model_save
from inference.models import LLMModel, model_id_validator


class Command(BaseCommand):
    help = "Register a GGUF model (or update the one with that id)."

    def add_arguments(self, parser):
        parser.add_argument("model_id", help="the id clients send as `model`")
        parser.add_argument("path", help="path to the .gguf file")
        parser.add_argument("--n-ctx", type=int, default=2048)
        parser.add_argument("--n-threads", type=int, default=None)
        parser.add_argument("--n-batch", type=int, default=512)
        parser.add_argument("--chat-format", choices=[AUTO, *sorted(CHAT_FORMATS)], default=AUTO)
        parser.add_argument("--no-embeddings", action="store_true")
        parser.add_argument("--disabled", action="store_true")
        add_routing_arguments(parser)
        parser.add_argument("--n-parallel", type=int, default=8)
        parser.add_argument("--load-on-start", action="store_true")
        parser.add_argument("--idle-unload", type=int, default=None, metavar="SECONDS")

    def handle(self, *args, model_id, path, **opts):
        try:
            model_id_validator(model_id)
        except ValidationError as exc:
            raise CommandError(f"invalid model id {model_id!r}: {exc.messages[0]}") from exc
        gguf = Path(path).expanduser().resolve()
        try:
            check_gguf(gguf)
        except ModelLoadError as exc:
            raise CommandError(str(exc)) from exc
        if opts["n_ctx"] < 16 or opts["n_batch"] < 1:
            raise CommandError("--n-ctx must be at least 16 and --n-batch at least 1")
        if opts["n_threads"] is not None and opts["n_threads"] < 1:
            raise CommandError("--n-threads must be at least 1")
        if opts["n_parallel"] < 1:
            raise CommandError("--n-parallel must be at least 1")
        values = {
            **routing_values(opts),
            "backend": "llama_cpp",
            "n_parallel": opts["n_parallel"],
            "load_on_start": opts["load_on_start"],
            "idle_unload_seconds": opts["idle_unload"],
            "path": str(gguf),
            "n_ctx": opts["n_ctx"],
            "n_threads": opts["n_threads"],
            "n_batch": opts["n_batch"],
            "chat_format": opts["chat_format"],
            "embeddings": not opts["no_embeddings"],
            "enabled": not opts["disabled"],
        }
        model = LLMModel.objects.filter(model_id=model_id).first()
        created = model is None
        model = model or LLMModel(model_id=model_id)
        changed = [name for name, value in values.items() if getattr(model, name) != value]
        for name, value in values.items():
            setattr(model, name, value)
        model_save(model=model, created=created, changed_fields=changed)
        verb = "Registered" if created else "Updated"
        self.stdout.write(f"{verb} model {model.model_id} -> {gguf}")
