"""A text field encrypted at rest (Fernet: AES-128-CBC with an HMAC-SHA256 tag).

Code reads and writes plaintext (`model.remote_api_key`); the column holds
`fernet:<token>`. Keys come from LLMSITE_FIELD_KEY (settings.LLMSITE_FIELD_KEYS):
the first encrypts, every one decrypts, so a new key is put first and the old
one kept until `manage.py reencrypt_secrets` has rewritten the rows.
"""

from __future__ import annotations

import logging
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

logger = logging.getLogger("llmsite.fields")

PREFIX = "fernet:"


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.LLMSITE_FIELD_KEYS))


def encrypt(value: str) -> str:
    return PREFIX + fernet().encrypt(value.encode()).decode()


def decrypt(stored: str) -> str:
    """Plaintext of a stored value; a value without the prefix predates encryption."""
    if not stored.startswith(PREFIX):
        return stored
    try:
        return fernet().decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        # A lost or rotated-out key: the secret is unusable, not the whole row.
        logger.error("an encrypted field cannot be decrypted with LLMSITE_FIELD_KEY")
        return ""


class EncryptedTextField(models.TextField):
    """Plaintext in Python, `fernet:<token>` in the database. Not searchable:
    every write draws a new IV, so equal values never compare equal in SQL."""

    def from_db_value(self, value, expression, connection):
        return value if value is None or value == "" else decrypt(value)

    def to_python(self, value):
        if isinstance(value, str) and value.startswith(PREFIX):
            return decrypt(value)
        return value

    def value_to_string(self, obj):
        # dumpdata and other serializers write the ciphertext, never the secret.
        value = self.value_from_object(obj)
        return encrypt(str(value)) if value else ""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "" or value.startswith(PREFIX):
            return value
        return encrypt(value)
