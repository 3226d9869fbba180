"""Staff admin for models: the rows, and loading them into this process's registry."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat

from accounts.admin import request_actor
from inference.engine import ModelLoadError
from inference.model_admin import (
    alias_save,
    model_delete,
    model_file_size,
    model_load,
    model_path_check,
    model_reload,
    model_save,
    model_state,
    model_unload,
)
from inference.models import CAPABILITIES, AliasCandidate, LLMModel, RouterAlias
from llmsite.errors import APIError

# How long a load action waits for the model before answering "loading".
LOAD_WAIT_SECONDS = 10.0


class LLMModelForm(forms.ModelForm):
    base_url = forms.URLField(
        required=False,
        assume_scheme="http",
        help_text="Remote backends: the server's /v1 base URL.",
    )
    # Write-only: the upstream key is never rendered back into the page.
    remote_api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Remote backends: the Bearer key sent upstream (empty keeps the current one).",
    )

    class Meta:
        model = LLMModel
        fields = [
            "model_id",
            "backend",
            "path",
            "base_url",
            "remote_api_key",
            "remote_model",
            "n_ctx",
            "n_threads",
            "n_batch",
            "n_parallel",
            "chat_format",
            "embeddings",
            "capabilities",
            "tags",
            "quality",
            "cost_per_million",
            "weight",
            "load_on_start",
            "idle_unload_seconds",
            "enabled",
            "owned_by",
        ]

    def clean_remote_api_key(self):
        value = self.cleaned_data.get("remote_api_key") or ""
        return value or (self.instance.remote_api_key if self.instance.pk else "")

    def clean_capabilities(self):
        value = self.cleaned_data.get("capabilities") or []
        if not isinstance(value, list) or any(c not in CAPABILITIES for c in value):
            raise forms.ValidationError(f"A list of: {', '.join(CAPABILITIES)}.")
        return value

    def clean(self):
        super().clean()
        data = self.cleaned_data
        if data.get("backend") == "openai":
            if not data.get("base_url"):
                self.add_error("base_url", "A remote backend needs its base URL.")
            return data
        path = (data.get("path") or "").strip()
        if not path:
            self.add_error("path", "A local model needs a GGUF path.")
            return data
        try:
            model_path_check(path=path)
        except ModelLoadError as exc:
            self.add_error("path", str(exc))
        data["path"] = path
        return data


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    form = LLMModelForm
    list_display = [
        "model_id",
        "backend",
        "path",
        "n_ctx",
        "quality",
        "cost_per_million",
        "embeddings",
        "enabled",
        "loaded_state",
        "memory",
    ]
    list_filter = ["enabled", "backend", "chat_format"]
    search_fields = ["model_id", "path"]
    actions = ["load_selected", "unload_selected", "reload_selected"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["loaded_state", "memory", "created_at"]

    @admin.display(description="loaded")
    def loaded_state(self, model: LLMModel) -> str:
        state = model_state(model=model)
        if state.state == "loaded" and (state.in_flight or state.queue_depth):
            return f"loaded ({state.in_flight} running, {state.queue_depth} queued)"
        return str(state)

    @admin.display(description="memory")
    def memory(self, model: LLMModel) -> str:
        size = model_file_size(model=model)
        text = "—" if size is None else filesizeformat(size)
        if model_state(model=model).state == "loaded":
            text += ", in use"
        return text

    def save_model(self, request, obj, form, change):
        model_save(
            model=obj,
            created=not change,
            changed_fields=form.changed_data,
            actor=request_actor(request),
        )

    def delete_model(self, request, obj):
        model_delete(model=obj, actor=request_actor(request))

    def delete_queryset(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            model_delete(model=model, actor=actor)

    def has_manage_engine_permission(self, request) -> bool:
        return request.user.has_perm("inference.manage_engine")

    def _report(self, request, model: LLMModel, state) -> None:
        level = messages.ERROR if state.state == "failed" else messages.SUCCESS
        self.message_user(request, f"{model.model_id}: {state}", level)

    @admin.action(description="Load selected models", permissions=["manage_engine"])
    def load_selected(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            try:
                state = model_load(model=model, actor=actor, wait=LOAD_WAIT_SECONDS)
            except APIError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            self._report(request, model, state)

    @admin.action(description="Unload selected models", permissions=["manage_engine"])
    def unload_selected(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            unloaded = model_unload(model=model, actor=actor)
            self.message_user(
                request,
                f"{model.model_id}: {'unloaded' if unloaded else 'was not loaded'}",
                messages.SUCCESS if unloaded else messages.WARNING,
            )

    @admin.action(description="Reload selected models", permissions=["manage_engine"])
    def reload_selected(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            try:
                state = model_reload(model=model, actor=actor, wait=LOAD_WAIT_SECONDS)
            except APIError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            self._report(request, model, state)


class AliasCandidateInline(admin.TabularInline):
    model = AliasCandidate
    extra = 1
    fields = ["position", "model"]
    ordering = ["position"]


@admin.register(RouterAlias)
class RouterAliasAdmin(admin.ModelAdmin):
    """Router aliases: a strategy over candidate models; `position` is the fallback order."""

    list_display = ["name", "strategy", "candidate_list", "enabled"]
    list_filter = ["strategy", "enabled"]
    search_fields = ["name"]
    inlines = [AliasCandidateInline]

    @admin.display(description="candidates (fallback order)")
    def candidate_list(self, alias: RouterAlias) -> str:
        return ", ".join(c.model.model_id for c in alias.candidates.select_related("model"))

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # Audited once the candidates are saved, so the row lists them.
        alias_save(alias=form.instance, created=not change, actor=request_actor(request))
