import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

import inference.models


class Migration(migrations.Migration):
    dependencies = [("inference", "0002_default_model")]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="n_parallel",
            field=models.PositiveIntegerField(
                default=8,
                help_text="Sequences decoded together; requests beyond this wait in a FIFO queue.",
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="backend",
            field=models.CharField(
                choices=[("llama_cpp", "llama.cpp (local GGUF)"), ("openai", "OpenAI-compatible")],
                default="llama_cpp",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="base_url",
            field=models.URLField(blank=True, help_text="Remote backends: the server's /v1 base URL."),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="remote_api_key",
            field=models.CharField(
                blank=True, help_text="Remote backends: the Bearer key sent upstream.", max_length=256
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="remote_model",
            field=models.CharField(
                blank=True,
                help_text="Remote backends: the model name upstream (default: model id).",
                max_length=128,
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="quality",
            field=models.FloatField(
                default=0.5,
                help_text="0..1, higher is better.",
                validators=[django.core.validators.MinValueValidator(0.0)],
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="cost_per_million",
            field=models.DecimalField(
                decimal_places=6,
                default=0,
                help_text="Running cost per million tokens.",
                max_digits=12,
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="capabilities",
            field=models.JSONField(
                blank=True,
                default=inference.models.default_capabilities,
                help_text="Any of chat, completion, json (embeddings follows the embeddings flag).",
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="tags",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="weight",
            field=models.PositiveIntegerField(
                default=1, help_text="Share under random/balanced ties."
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="load_on_start",
            field=models.BooleanField(
                default=False, help_text="Load when the server starts instead of on first use."
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="idle_unload_seconds",
            field=models.PositiveIntegerField(
                blank=True,
                null=True,
                help_text="Unload after this long without requests; empty: never.",
            ),
        ),
        migrations.CreateModel(
            name="RouterAlias",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "name",
                    models.CharField(
                        max_length=128, unique=True, validators=[inference.models.model_id_validator]
                    ),
                ),
                (
                    "strategy",
                    models.CharField(
                        choices=[(s, s) for s in inference.models.STRATEGIES],
                        default="balanced",
                        max_length=32,
                    ),
                ),
                ("description", models.CharField(blank=True, max_length=256)),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "verbose_name": "router alias",
                "verbose_name_plural": "router aliases",
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="AliasCandidate",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("position", models.PositiveIntegerField(default=0)),
                (
                    "alias",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="candidates",
                        to="inference.routeralias",
                    ),
                ),
                (
                    "model",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="alias_entries",
                        to="inference.llmmodel",
                    ),
                ),
            ],
            options={"ordering": ["position", "id"]},
        ),
        migrations.AddConstraint(
            model_name="aliascandidate",
            constraint=models.UniqueConstraint(fields=("alias", "model"), name="alias_candidate_unique"),
        ),
    ]
