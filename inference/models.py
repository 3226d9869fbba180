from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from inference.chat_formats import CHAT_FORMATS

BUNDLED_PREFIX = "bundled:"
model_id_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:/\-]{0,127}$",
    "Model ids use letters, digits and . _ : / - (at most 128 characters).",
)


class LLMModelQuerySet(models.QuerySet):
    def enabled(self) -> LLMModelQuerySet:
        return self.filter(enabled=True)


class LLMModel(models.Model):
    """A GGUF model llmsite can serve. `model_id` is what clients put in `"model"`."""

    model_id = models.CharField(max_length=128, unique=True, validators=[model_id_validator])
    path = models.CharField(
        max_length=1024,
        help_text="Path to the GGUF file, or 'bundled:<package>' for a model shipped as a package.",
    )
    n_ctx = models.PositiveIntegerField(default=2048, validators=[MinValueValidator(16)])
    n_threads = models.PositiveIntegerField(
        null=True, blank=True, help_text="llama.cpp threads; empty uses LLMSITE_N_THREADS."
    )
    n_batch = models.PositiveIntegerField(default=512, validators=[MinValueValidator(1)])
    chat_format = models.CharField(
        max_length=32, choices=[(name, name) for name in CHAT_FORMATS], default="gemma"
    )
    embeddings = models.BooleanField(default=True, help_text="Serve /v1/embeddings.")
    enabled = models.BooleanField(default=True)
    owned_by = models.CharField(max_length=64, default="llmsite")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = LLMModelQuerySet.as_manager()

    class Meta:
        ordering = ["model_id"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.model_id
