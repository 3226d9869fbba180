"""`manage.py models`: the running server's model workers: status, load, unload, reload.

It talks to the supervisor of the `manage.py serve` holding this data dir, so
it acts on the same worker every gateway process submits to.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from inference.management.commands.serve import running_supervisor
from inference.model_admin import model_load, model_reload, model_unload
from inference.models import LLMModel


class Command(BaseCommand):
    help = "Show, load, unload or reload the model workers of the running `manage.py serve`."

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=["status", "load", "unload", "reload"])
        parser.add_argument("model_id", nargs="?")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a load")

    def handle(self, *args, action: str, model_id: str | None, wait: float, **options) -> None:
        holder = running_supervisor()
        if holder is None:
            raise CommandError("no `manage.py serve` is running on this data dir")
        from inference import registry as registry_module
        from inference.workers.client import WorkerRegistry

        # This command's own registry: the running server's workers.
        registry_module.registry = WorkerRegistry(holder["run_dir"])
        import inference.model_admin as model_admin

        model_admin.registry = registry_module.registry
        if action == "status":
            workers = registry_module.registry.workers()
            out = {
                mid: {k: view[k] for k in ("state", "generation", "pid", "crashes", "restarts")}
                | {"stats": view["stats"], "error": view["error"]}
                for mid, view in sorted(workers.items())
            }
            self.stdout.write(json.dumps(out, indent=2, sort_keys=True))
            return
        if not model_id:
            raise CommandError(f"`models {action}` needs a model id")
        model = LLMModel.objects.filter(model_id=model_id).first()
        if model is None:
            raise CommandError(f"no model {model_id!r}")
        if action == "unload":
            done = model_unload(model=model)
            self.stdout.write("unloaded" if done else "not loaded")
            return
        do = model_load if action == "load" else model_reload
        self.stdout.write(str(do(model=model, wait=wait)))
