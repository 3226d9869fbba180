"""Remote backend API keys are encrypted at rest; code still reads plaintext."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core import serializers
from django.db import connection

from inference.models import BACKEND_OPENAI, LLMModel
from llmsite import fields

pytestmark = pytest.mark.django_db

SECRET = "sk-upstream-secret-123"


def stored(model: LLMModel) -> str:
    table = connection.ops.quote_name(LLMModel._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT remote_api_key FROM {table} WHERE id = %s", [model.pk])
        return cursor.fetchone()[0]


def remote(**kwargs) -> LLMModel:
    return LLMModel.objects.create(
        model_id="far",
        backend=BACKEND_OPENAI,
        base_url="http://10.0.0.7:8000/v1",
        remote_api_key=SECRET,
        **kwargs,
    )


def test_the_column_holds_ciphertext_and_the_model_plaintext():
    model = remote()
    raw = stored(model)
    assert SECRET not in raw and raw.startswith("fernet:")
    assert LLMModel.objects.get(pk=model.pk).remote_api_key == SECRET


def test_dumps_carry_ciphertext_and_load_back():
    model = remote()
    dumped = serializers.serialize("json", [model])
    assert SECRET not in dumped
    [loaded] = serializers.deserialize("json", dumped)
    assert loaded.object.remote_api_key == SECRET


def test_a_new_key_first_still_reads_rows_written_under_the_old_one(settings):
    model = remote()
    settings.LLMSITE_FIELD_KEYS = [Fernet.generate_key().decode(), *settings.LLMSITE_FIELD_KEYS]
    assert LLMModel.objects.get(pk=model.pk).remote_api_key == SECRET


def test_a_lost_key_empties_the_secret_instead_of_breaking_the_row(settings):
    model = remote()
    settings.LLMSITE_FIELD_KEYS = [Fernet.generate_key().decode()]
    assert LLMModel.objects.get(pk=model.pk).remote_api_key == ""


def test_migration_encrypts_rows_stored_in_plain_text():
    model = remote()
    table = connection.ops.quote_name(LLMModel._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET remote_api_key = %s", [SECRET])
    assert stored(model) == SECRET
    assert LLMModel.objects.get(pk=model.pk).remote_api_key == SECRET  # legacy rows still read
    migration = importlib.import_module("inference.migrations.0006_encrypt_remote_api_key")
    migration.encrypt_existing(apps, SimpleNamespace(connection=connection))
    assert stored(model).startswith(fields.PREFIX)
    assert LLMModel.objects.get(pk=model.pk).remote_api_key == SECRET


def test_reencrypt_secrets_moves_rows_to_the_new_first_key(settings):
    from io import StringIO

    from django.core.management import call_command

    model = remote()
    old = list(settings.LLMSITE_FIELD_KEYS)
    new = Fernet.generate_key().decode()
    settings.LLMSITE_FIELD_KEYS = [new, *old]
    call_command("reencrypt_secrets", stdout=StringIO())
    settings.LLMSITE_FIELD_KEYS = [new]
    assert LLMModel.objects.get(pk=model.pk).remote_api_key == SECRET
