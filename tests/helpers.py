from __future__ import annotations

import json
import os

from asgiref.sync import async_to_sync
from django import forms
from django.db import models
from django.urls import reverse

from accounts.models import AuditLog


def embedded_env() -> dict[str, str]:
    """This process's environment without DATABASE_URL and REDIS_URL: a `manage.py`
    run in a subprocess gets the embedded defaults, whatever stores the suite uses."""
    return {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}


def no_eos(engine) -> dict[int, float]:
    """logit_bias that keeps Gemma from ending its turn (its <eos> and <end_of_turn>)."""
    ends = engine.tokenize("<eos><end_of_turn>", add_bos=False, special=True)
    return {token: -100.0 for token in ends}


def read_stream(response) -> str:
    """The whole body of a streaming response whose content is an async iterator."""

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)().decode()


def sse_events(response) -> list[str]:
    return [event for event in read_stream(response).split("\n\n") if event]


def sse_chunks(events: list[str]) -> list[dict]:
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events if e != "data: [DONE]"]


# -- the Django admin ---------------------------------------------------------------
def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def admin_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _put(form, data: dict) -> None:
    """The values an unchanged browser form would post back."""

    def text(value) -> str:
        if value is None:
            return ""
        return str(value.pk if isinstance(value, models.Model) else value)

    for name, field in form.fields.items():
        key, value = form.add_prefix(name), form[name].value()
        if isinstance(field, forms.BooleanField):
            if value:
                data[key] = "on"
        elif isinstance(field, forms.JSONField):
            data[key] = value  # already the JSON text the page shows
            if field.show_hidden_initial:  # callable defaults: the page posts both
                data[form.add_initial_prefix(name)] = value
        elif isinstance(value, list | tuple):
            data[key] = [text(v) for v in value]
        else:
            data[key] = text(value)


def admin_form_data(response) -> dict:
    """What submitting an admin change page unchanged would post."""
    data: dict = {}
    _put(response.context["adminform"].form, data)
    for inline in response.context["inline_admin_formsets"]:
        _put(inline.formset.management_form, data)
        for form in inline.formset.forms:
            _put(form, data)
    return data


def audit_rows(action: str) -> list[AuditLog]:
    return list(AuditLog.objects.filter(action=action))
