from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from inference.chat_formats import AUTO, CHAT_FORMAT_CHOICES
from llmsite.fields import EncryptedTextField

BUNDLED_PREFIX = "bundled:"

BACKEND_LLAMA_CPP = "llama_cpp"
BACKEND_OPENAI = "openai"

# What a model can serve; the router only picks models that can serve a request.
CAPABILITIES = ("chat", "completion", "embeddings", "json", "tools")

STRATEGIES = (
    "balanced",
    "speed-priority",
    "quality-first",
    "cost-optimized",
    "round-robin",
    "least-loaded",
    "random",
)


def default_capabilities() -> list[str]:
    return ["chat", "completion", "json"]


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
        blank=True,
        help_text="Path to the GGUF file, or 'bundled:<package>' for a model shipped as a package.",
    )
    n_ctx = models.PositiveIntegerField(default=2048, validators=[MinValueValidator(16)])
    n_threads = models.PositiveIntegerField(
        null=True, blank=True, help_text="llama.cpp threads; empty uses LLMSITE_N_THREADS."
    )
    n_batch = models.PositiveIntegerField(default=512, validators=[MinValueValidator(1)])
    n_parallel = models.PositiveIntegerField(
        default=8,
        validators=[MinValueValidator(1)],
        help_text="Sequences decoded together; requests beyond this wait in a FIFO queue.",
    )
    chat_format = models.CharField(
        max_length=32,
        choices=CHAT_FORMAT_CHOICES,
        default=AUTO,
        help_text="auto: the GGUF's own chat template (chatml without one); others override it.",
    )
    embeddings = models.BooleanField(default=True, help_text="Serve /v1/embeddings.")
    enabled = models.BooleanField(default=True)
    owned_by = models.CharField(max_length=64, default="llmsite")

    # -- routing ------------------------------------------------------------
    backend = models.CharField(
        max_length=16,
        choices=[
            (BACKEND_LLAMA_CPP, "llama.cpp (local GGUF)"),
            (BACKEND_OPENAI, "OpenAI-compatible"),
        ],
        default=BACKEND_LLAMA_CPP,
    )
    base_url = models.URLField(blank=True, help_text="Remote backends: the server's /v1 base URL.")
    remote_api_key = EncryptedTextField(
        blank=True, help_text="Remote backends: the Bearer key sent upstream (encrypted at rest)."
    )
    remote_model = models.CharField(
        max_length=128,
        blank=True,
        help_text="Remote backends: the model name upstream (default: model id).",
    )
    quality = models.FloatField(
        default=0.5, validators=[MinValueValidator(0.0)], help_text="0..1, higher is better."
    )
    cost_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, default=0, help_text="Running cost per million tokens."
    )
    capabilities = models.JSONField(
        default=default_capabilities,
        blank=True,
        help_text="Any of chat, completion, json, tools (embeddings follows the embeddings flag).",
    )
    tags = models.JSONField(default=list, blank=True)
    weight = models.PositiveIntegerField(default=1, help_text="Share under random/balanced ties.")
    load_on_start = models.BooleanField(
        default=False, help_text="Load when the server starts instead of on first use."
    )
    idle_unload_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Unload after this long without requests; empty: never."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = LLMModelQuerySet.as_manager()

    class Meta:
        ordering = ["model_id"]
        verbose_name = "model"
        # Loading and unloading affect every tenant: staff status alone is not enough.
        permissions = [("manage_engine", "Can load, unload and reload models")]

    def __str__(self) -> str:
        return self.model_id

    @property
    def is_remote(self) -> bool:
        return self.backend == BACKEND_OPENAI

    def can_serve(self, capability: str) -> bool:
        if capability == "embeddings":
            return self.embeddings
        return capability in (self.capabilities or [])


class RouterAlias(models.Model):
    """A name clients can put in `"model"`: a strategy over candidate models, tried in order."""

    name = models.CharField(max_length=128, unique=True, validators=[model_id_validator])
    strategy = models.CharField(
        max_length=32, choices=[(s, s) for s in STRATEGIES], default="balanced"
    )
    description = models.CharField(max_length=256, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "router alias"
        verbose_name_plural = "router aliases"

    def __str__(self) -> str:
        return self.name


class AliasCandidate(models.Model):
    """One model an alias may route to; `position` is the fallback order."""

    alias = models.ForeignKey(RouterAlias, on_delete=models.CASCADE, related_name="candidates")
    model = models.ForeignKey(LLMModel, on_delete=models.CASCADE, related_name="alias_entries")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["alias", "model"], name="alias_candidate_unique")
        ]

    def __str__(self) -> str:
        return f"{self.alias.name} -> {self.model.model_id}"


class StoredResponse(models.Model):
    """A /v1/responses answer kept for `previous_response_id`, GET and input_items
    (`store: true`, OpenAI's default) until `expires_at`; an expired row reads as absent."""

    tenant = models.ForeignKey(
        "accounts.Tenant", on_delete=models.CASCADE, related_name="stored_responses"
    )
    response_id = models.CharField(max_length=64, unique=True)
    response = models.JSONField(help_text="The Response object as it was answered.")
    input_items = models.JSONField(
        default=list, help_text="The whole conversation's input items, inherited ones included."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.response_id
