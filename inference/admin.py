"""Staff admin for models: the rows, and loading them into this process's registry."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat

from accounts.admin import request_actor
from inference.engine import ModelLoadError
from inference.models import LLMModel
from inference.operations import (
    model_delete,
    model_file_size,
    model_load,
    model_path_check,
    model_reload,
    model_save,
    model_state,
    model_unload,
)
from llmsite.errors import APIError

# How long a load action waits for the model before answering "loading".
LOAD_WAIT_SECONDS = 10.0


class LLMModelForm(forms.ModelForm):
    class Meta:
        model = LLMModel
        fields = [
            "model_id",
            "path",
            "n_ctx",
            "n_threads",
            "n_batch",
            "chat_format",
            "embeddings",
            "enabled",
            "owned_by",
        ]

    def clean_path(self):
        path = self.cleaned_data["path"].strip()
        try:
            model_path_check(path=path)
        except ModelLoadError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return path


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    form = LLMModelForm
    list_display = [
        "model_id",
        "path",
        "n_ctx",
        "chat_format",
        "embeddings",
        "enabled",
        "loaded_state",
        "memory",
    ]
    list_filter = ["enabled", "chat_format"]
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

    def _report(self, request, model: LLMModel, state) -> None:
        level = messages.ERROR if state.state == "failed" else messages.SUCCESS
        self.message_user(request, f"{model.model_id}: {state}", level)

    @admin.action(description="Load selected models")
    def load_selected(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            try:
                state = model_load(model=model, actor=actor, wait=LOAD_WAIT_SECONDS)
            except APIError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            self._report(request, model, state)

    @admin.action(description="Unload selected models")
    def unload_selected(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            unloaded = model_unload(model=model, actor=actor)
            self.message_user(
                request,
                f"{model.model_id}: {'unloaded' if unloaded else 'was not loaded'}",
                messages.SUCCESS if unloaded else messages.WARNING,
            )

    @admin.action(description="Reload selected models")
    def reload_selected(self, request, queryset):
        actor = request_actor(request)
        for model in queryset:
            try:
                state = model_reload(model=model, actor=actor, wait=LOAD_WAIT_SECONDS)
            except APIError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            self._report(request, model, state)
