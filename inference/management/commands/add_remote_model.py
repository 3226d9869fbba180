import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import URLValidator

from inference.management.routing_args import add_routing_arguments, routing_values
from inference.model_admin import model_save
from inference.models import LLMModel, model_id_validator


class Command(BaseCommand):
    help = (
        "Register a model served by a remote OpenAI-compatible server (another llmsite, "
        "llama-server, vLLM). The upstream key is read from stdin with --key-stdin, so it "
        "never shows in the process list or the shell history."
    )

    def add_arguments(self, parser):
        parser.add_argument("model_id", help="the id clients send as `model`")
        parser.add_argument("base_url", help="the server's OpenAI base URL, e.g. http://h:8000/v1")
        parser.add_argument("--remote-model", default="", help="the model name upstream")
        parser.add_argument("--key-stdin", action="store_true", help="read the upstream key")
        parser.add_argument("--n-ctx", type=int, default=4096, help="the upstream context")
        parser.add_argument("--embeddings", action="store_true", help="it serves embeddings")
        parser.add_argument("--disabled", action="store_true")
        add_routing_arguments(parser)

    def handle(self, *args, model_id, base_url, **opts):
        try:
            model_id_validator(model_id)
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from exc
        key = sys.stdin.readline().strip() if opts["key_stdin"] else ""
        values = {
            **routing_values(opts),
            "backend": "openai",
            "path": "",
            "base_url": base_url.rstrip("/"),
            "remote_model": opts["remote_model"],
            "n_ctx": opts["n_ctx"],
            "embeddings": opts["embeddings"],
            "enabled": not opts["disabled"],
        }
        model = LLMModel.objects.filter(model_id=model_id).first()
        created = model is None
        model = model or LLMModel(model_id=model_id)
        if key or created:
            values["remote_api_key"] = key
        changed = [name for name, value in values.items() if getattr(model, name) != value]
        for name, value in values.items():
            setattr(model, name, value)
        # The audit row names the changed fields; the key's value never goes there.
        model_save(
            model=model,
            created=created,
            changed_fields=[n for n in changed if n != "remote_api_key"],
        )
        verb = "Registered" if created else "Updated"
        self.stdout.write(f"{verb} remote model {model.model_id} -> {model.base_url}")
