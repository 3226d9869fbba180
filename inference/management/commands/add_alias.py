from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from inference.model_admin import alias_save
from inference.models import STRATEGIES, LLMModel, RouterAlias, model_id_validator


class Command(BaseCommand):
    help = "Create or update a router alias: a strategy over models, listed in fallback order."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the name clients send as `model`")
        parser.add_argument("--strategy", choices=STRATEGIES, default="balanced")
        parser.add_argument(
            "--models", required=True, help="comma list of model ids, in fallback order"
        )
        parser.add_argument("--description", default="")
        parser.add_argument("--disabled", action="store_true")

    def handle(self, *args, name, **opts):
        try:
            model_id_validator(name)
        except ValidationError as exc:
            raise CommandError(f"invalid alias name {name!r}: {exc.messages[0]}") from exc
        if LLMModel.objects.filter(model_id=name).exists():
            raise CommandError(f"{name!r} is already a model id; an alias needs its own name")
        ids = [m.strip() for m in opts["models"].split(",") if m.strip()]
        found = {m.model_id: m for m in LLMModel.objects.filter(model_id__in=ids)}
        missing = [m for m in ids if m not in found]
        if missing:
            raise CommandError(f"unknown models: {', '.join(missing)}")
        if len(set(ids)) != len(ids):
            raise CommandError("a model may appear only once in --models")
        alias = RouterAlias.objects.filter(name=name).first()
        created = alias is None
        alias = alias or RouterAlias(name=name)
        alias.strategy = opts["strategy"]
        alias.description = opts["description"]
        alias.enabled = not opts["disabled"]
        alias_save(alias=alias, models=[found[m] for m in ids], created=created)
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} alias {name}: {opts['strategy']} over {', '.join(ids)}")
