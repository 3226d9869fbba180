"""llmsite settings: read from the environment, embedded defaults when nothing is set.

Variables (all optional):
  LLMSITE_ENV             development or production (development); production turns on
                          secure cookies, HSTS, the proxy HTTPS header and SSL redirect,
                          and needs LLMSITE_SECRET_KEY, LLMSITE_ALLOWED_HOSTS and
                          LLMSITE_FIELD_KEY set, DEBUG off and no wildcard host
  LLMSITE_DATA_DIR        where the SQLite file, the assembled GGUF and the secret live (./var)
  LLMSITE_SECRET_KEY      Django secret key (default: generated once into the data dir;
                          required, 50+ characters, in production)
  LLMSITE_DEBUG           1/0 (0)
  LLMSITE_ALLOWED_HOSTS   comma list (127.0.0.1,localhost,[::1],testserver)
  LLMSITE_FIELD_KEY       Fernet key(s), comma list, for secrets stored in the database
                          (remote backend keys); the first encrypts. Default: derived
                          from the secret key; required in production
  LLMSITE_SSL_REDIRECT    production: redirect plain HTTP to HTTPS (1)
  LLMSITE_HSTS_SECONDS    production: Strict-Transport-Security max-age (31536000)
  LLMSITE_HSTS_SUBDOMAINS production: includeSubDomains (1)
  LLMSITE_HSTS_PRELOAD    production: preload (0)
  LLMSITE_CSRF_TRUSTED_ORIGINS  comma list of https://origins the admin is reached under
  DATABASE_URL            postgresql://user:pass@host:5432/db or sqlite:////path
  LLMSITE_DB_POOL_SIZE    PostgreSQL: connections each process's pool may open (20)
  REDIS_URL               redis://host:6379/0 switches cache and channel layer to Redis
  LLMSITE_DEFAULT_MODEL   the model preloaded and checked by /ready (qwen2.5-coder-0.5b-instruct)
  LLMSITE_PRELOAD         1 loads the default model and `load_on_start` models at start (0)
  LLMSITE_N_THREADS       llama.cpp threads for models that do not set their own (cores)
  LLMSITE_MAX_BODY_BYTES  largest accepted request body (4 MiB)
  LLMSITE_LOAD_TIMEOUT    seconds a request waits for its model to load before a 503 (30)
  LLMSITE_MAX_QUEUE       jobs waiting on one engine before new requests get a 503 (64)
  LLMSITE_ADMISSION_WINDOW_MS  how long an idle engine may hold a first prompt while
                          the gateway has more requests for it on their way (20; 0: never)
  LLMSITE_ENGINE_NICE     added to the nice value of each engine's threads, llama.cpp's
                          compute threads included: the threads that hand tokens on
                          wake promptly beside them (10; 0: as the process)
  LLMSITE_TENANT_QUEUE_SHARE  one tenant's jobs queued or running on one engine before
                          its new requests get a 429 (half of LLMSITE_MAX_QUEUE)
  LLMSITE_MAX_PROMPT_CHARS  characters of prompt a local model tokenizes for one request;
                          past it a 400 context_length_exceeded (0: 16 per token of n_ctx)
  LLMSITE_EMBEDDINGS_MAX_TOKENS  tokens of input in one embeddings request (65536)
  LLMSITE_METRICS_TOKEN   bearer token that may read /metrics from anywhere (unset: none)
  LLMSITE_METRICS_ALLOW_IPS  addresses/CIDRs that may read /metrics without it
                          (127.0.0.1,::1; `none` for token only)
  LLMSITE_KEY_CACHE_SECONDS  how long a process may keep an authenticated API key: the
                          most a write that bypasses the invalidation (queryset.update(),
                          raw SQL) goes unseen (60; 0 turns the cache off)
  LLMSITE_JWT_ACCESS_MINUTES  access-token lifetime (5)
  LLMSITE_JWT_REFRESH_DAYS    refresh-token lifetime (1)
  LLMSITE_LOGIN_RATE      login attempts allowed per IP and per username (10/m)
  LLMSITE_LOG_LEVEL       INFO
  LLMSITE_ROUTER_STRATEGY strategy behind `"model": "auto"` (balanced)
  LLMSITE_ROUTER_FAILURES failures in a row before a backend is cooled down (3)
  LLMSITE_ROUTER_COOLDOWN seconds a failing backend is passed over (30)
  LLMSITE_ROUTER_TIMEOUT  seconds to the first token before an alias falls back (60)
  LLMSITE_MESSAGES_PING_S  seconds of silence before a /v1/messages stream sends `ping` (10)
  LLMSITE_RESPONSES_RETENTION_DAYS  days a stored /v1/responses answer is kept (30)
  LLMSITE_WS_AUTH_TIMEOUT seconds a WebSocket may stay unauthenticated before 4401 (10)
  LLMSITE_REMOTE_TIMEOUT  seconds a remote backend may stay silent mid-response (120)
  LLMSITE_REMOTE_CONNECT_TIMEOUT  seconds to connect to a remote backend (5)
  LLMSITE_MEMORY_BUDGET_MB  MiB of GGUF kept loaded; LRU idle models make room (0: no cap)
  LLMSITE_BATCH_MAX       requests in one /v1/batch call (32)
  LLMSITE_WEB_PROCESSES   gateway (daphne) processes `manage.py serve` runs on the one port
                          (one per core, at most 8)
  LLMSITE_WORKER_HANG_SECONDS  seconds a model worker may go without a heartbeat, or
                          without step progress while it has work, before it is restarted (30)
  LLMSITE_DRAIN_SECONDS   on SIGTERM, seconds in-flight requests get to finish (30)
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from llmsite.env import (
    ConfigError,
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_networks,
    env_path,
    env_str,
    redis_url,
    secret_key_file,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("LLMSITE_DATA_DIR", BASE_DIR / "var")
try:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise ConfigError(f"LLMSITE_DATA_DIR {DATA_DIR} cannot be created: {exc}") from exc


# One switch for production: secure cookies, HSTS, the proxy's HTTPS header, and
# start-up refuses development defaults (DEBUG, a generated secret, any host).
LLMSITE_ENV = env_str("LLMSITE_ENV", "development").strip().lower()
if LLMSITE_ENV not in {"development", "production"}:
    raise ConfigError(f"LLMSITE_ENV must be development or production, got {LLMSITE_ENV!r}")
PRODUCTION = LLMSITE_ENV == "production"


def _secret_key() -> str:
    key = env_str("LLMSITE_SECRET_KEY").strip()
    if key:
        # Django's deploy check wants 50 characters; development accepts 32.
        minimum = 50 if PRODUCTION else 32
        if len(key) < minimum or len(set(key)) < 5:
            raise ConfigError(f"LLMSITE_SECRET_KEY must be at least {minimum} varied characters")
        return key
    if PRODUCTION:
        raise ConfigError("LLMSITE_ENV=production needs LLMSITE_SECRET_KEY (50+ characters)")
    return secret_key_file(DATA_DIR / "secret_key")


SECRET_KEY = _secret_key()
# Django finds its security middleware by path; ours subclass it: llmsite.checks
# checks them by class, and runs the checks that depend on them.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]
DEBUG = env_bool("LLMSITE_DEBUG", False)
ALLOWED_HOSTS = env_list("LLMSITE_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION:
    if DEBUG:
        raise ConfigError("LLMSITE_DEBUG must be off when LLMSITE_ENV=production")
    if not env_str("LLMSITE_ALLOWED_HOSTS").strip():
        raise ConfigError("LLMSITE_ENV=production needs LLMSITE_ALLOWED_HOSTS (the served names)")
    if any(host == "*" or host.startswith("*") for host in ALLOWED_HOSTS):
        raise ConfigError("LLMSITE_ALLOWED_HOSTS may not hold a wildcard in production")
    # TLS ends at the proxy in front of daphne, which must set (and overwrite)
    # X-Forwarded-Proto; plain-HTTP probes of /health, /ready, /metrics stay plain.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("LLMSITE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("LLMSITE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("LLMSITE_HSTS_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("LLMSITE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a commitment for the whole domain, opted into explicitly.
        SILENCED_SYSTEM_CHECKS += ["security.W021"]
    CSRF_TRUSTED_ORIGINS = env_list("LLMSITE_CSRF_TRUSTED_ORIGINS", [])


def _field_keys() -> list[str]:
    """Fernet keys for fields encrypted at rest (llmsite/fields.py); first one encrypts."""
    import base64
    import hashlib

    from cryptography.fernet import Fernet

    raw = env_list("LLMSITE_FIELD_KEY", [])
    if not raw:
        if PRODUCTION:
            raise ConfigError(
                "LLMSITE_ENV=production needs LLMSITE_FIELD_KEY (a Fernet key: "
                'python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())")'
            )
        # Development: derived from the secret key, so it lives and dies with it.
        digest = hashlib.sha256(b"llmsite-field-key:" + SECRET_KEY.encode()).digest()
        return [base64.urlsafe_b64encode(digest).decode()]
    for key in raw:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigError(
                "LLMSITE_FIELD_KEY must be comma-separated Fernet keys (32 url-safe base64 bytes)"
            ) from None
    return raw


LLMSITE_FIELD_KEYS = _field_keys()

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "llmsite",
    "accounts",
    "billing",
    "inference",
]

MIDDLEWARE = [
    "llmsite.middleware.request_context",
    "inference.workers.middleware.refuse_while_draining",
    # Django's own, with their hooks on the event loop (see llmsite.middleware).
    "llmsite.middleware.SecurityMiddleware",
    "llmsite.middleware.StaticFiles",  # WhiteNoise, likewise
    "llmsite.middleware.SessionMiddleware",
    "llmsite.middleware.CommonMiddleware",
    "llmsite.middleware.CsrfViewMiddleware",
    "llmsite.middleware.AuthenticationMiddleware",
    "llmsite.middleware.MessageMiddleware",
    "llmsite.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmsite.urls"
ASGI_APPLICATION = "llmsite.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("DATABASE_URL").strip()
DATABASES: dict[str, dict[str, Any]] = {
    "default": database_from_url("DATABASE_URL", _database_url)
    if _database_url
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "llmsite.sqlite3"}
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several sync threads write usage rows; wait for the lock instead of failing at once.
    # Write-ahead log: a commit appends to one file and syncs it once (the rollback
    # journal syncs two), and readers never wait for a writer. Commits stay durable
    # (synchronous=FULL, SQLite's default).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    # A file, not memory, so that tests can hammer it from several processes.
    # Per process, so two suites in one checkout never share (and delete) one file.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test_llmsite_{os.getpid()}.sqlite3")}
else:
    # Likewise per process on PostgreSQL: two suites against one server (a
    # developer's run beside CI's) must not drop each other's test database.
    DATABASES["default"]["TEST"] = {"NAME": f"test_llmsite_{os.getpid()}"}
    # A pool (psycopg_pool, through Django): under ASGI each request has its own
    # connection, closed when it ends, so without a pool every request would open
    # one (a few ms, and a PostgreSQL backend process). The request path gives
    # its connection back after each piece of database work (llmsite.db), so a
    # long stream holds none.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 1,
            "max_size": env_int("LLMSITE_DB_POOL_SIZE", 20, minimum=1),
            "timeout": 10,
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_redis = env_str("REDIS_URL").strip()
REDIS_URL = redis_url("REDIS_URL", _redis) if _redis else ""
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "llmsite",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, which cuts
            # channels_redis's blocking receive (and with it idle WebSockets).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": "llmsite",
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# Bodies are read whole by the ASGI server; this bounds them (413 beyond it).
MAX_BODY_BYTES = env_int("LLMSITE_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.JWTTenantAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["llmsite.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "llmsite.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "llmsite API",
    "DESCRIPTION": "OpenAI-compatible API for GGUF models served by llama.cpp, multi-tenant.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "FinishReasonEnum": ["stop", "length"],
        "RoleEnum": "accounts.models.Role",
        # One-value enums the /v1 response shapes share (inference/openapi.py).
        "ListObjectEnum": ["list"],
        "TextCompletionObjectEnum": ["text_completion"],
        "AssistantRoleEnum": ["assistant"],
        "FunctionTypeEnum": ["function"],
        "AnthropicMessageTypeEnum": ["message"],  # inference/anthropic_schema.py
        "ResponseStatusEnum": "inference.responses_schema.STATUSES",
        "ResponseItemStatusEnum": "inference.responses_schema.ITEM_STATUSES",
    },
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("LLMSITE_JWT_ACCESS_MINUTES", 5, minimum=1)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("LLMSITE_JWT_REFRESH_DAYS", 1, minimum=1)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "AUTH_HEADER_TYPES": ("Bearer",),
}
# Login attempts per IP and per username (django-ratelimit rate strings).
LLMSITE_LOGIN_RATE = env_str("LLMSITE_LOGIN_RATE", "10/m")
# Who may scrape /metrics: a bearer token, or a client address in the allow-list.
# REMOTE_ADDR is the peer daphne sees; behind a proxy, list the proxy (or use the token).
LLMSITE_METRICS_TOKEN = env_str("LLMSITE_METRICS_TOKEN").strip()
if LLMSITE_METRICS_TOKEN and len(LLMSITE_METRICS_TOKEN) < 16:
    raise ConfigError("LLMSITE_METRICS_TOKEN must be at least 16 characters")
LLMSITE_METRICS_ALLOW_IPS = env_networks("LLMSITE_METRICS_ALLOW_IPS", ["127.0.0.1", "::1"])

LLMSITE_DEFAULT_MODEL = env_str("LLMSITE_DEFAULT_MODEL", "qwen2.5-coder-0.5b-instruct")
LLMSITE_PRELOAD = env_bool("LLMSITE_PRELOAD", False)
LLMSITE_N_THREADS = env_int("LLMSITE_N_THREADS", os.cpu_count() or 1, minimum=1)
LLMSITE_LOAD_TIMEOUT = env_int("LLMSITE_LOAD_TIMEOUT", 30, minimum=1)
LLMSITE_MAX_QUEUE = env_int("LLMSITE_MAX_QUEUE", 64, minimum=0)
LLMSITE_ADMISSION_WINDOW_MS = env_int("LLMSITE_ADMISSION_WINDOW_MS", 20, minimum=0)
LLMSITE_ENGINE_NICE = env_int("LLMSITE_ENGINE_NICE", 10, minimum=0, maximum=19)
# One tenant's jobs queued or running on one engine, at most (the rest of the
# queue stays for the others).
LLMSITE_TENANT_QUEUE_SHARE = env_int(
    "LLMSITE_TENANT_QUEUE_SHARE", max(1, LLMSITE_MAX_QUEUE // 2), minimum=1
)
LLMSITE_MAX_PROMPT_CHARS = env_int("LLMSITE_MAX_PROMPT_CHARS", 0, minimum=0)
LLMSITE_EMBEDDINGS_MAX_TOKENS = env_int("LLMSITE_EMBEDDINGS_MAX_TOKENS", 65536, minimum=1)
# Quota counters: "auto" uses Redis when REDIS_URL is set, else database row locks.
LLMSITE_QUOTA_BACKEND = env_str("LLMSITE_QUOTA_BACKEND", "auto")
if LLMSITE_QUOTA_BACKEND not in {"auto", "redis", "db"}:
    raise ConfigError("LLMSITE_QUOTA_BACKEND must be auto, redis or db")
if LLMSITE_QUOTA_BACKEND == "redis" and not REDIS_URL:
    raise ConfigError("LLMSITE_QUOTA_BACKEND=redis needs REDIS_URL")
LLMSITE_QUOTA_PREFIX = env_str("LLMSITE_QUOTA_PREFIX", "llmsite:q")
# Authenticated API keys are cached per process and checked against generation
# counters on every request, so changes made through the ORM apply at once; this
# bounds how long one made around the signals can go unseen (0: no cache).
LLMSITE_KEY_CACHE_SECONDS = env_int("LLMSITE_KEY_CACHE_SECONDS", 60, minimum=0)
# Raw usage records older than this are pruned by `manage.py prune_usage` (0: keep all).
LLMSITE_USAGE_RETENTION_DAYS = env_int("LLMSITE_USAGE_RETENTION_DAYS", 0, minimum=0) or None
MODELS_DIR = DATA_DIR / "models"

# Checked against inference.models.STRATEGIES when the inference app is ready.
LLMSITE_ROUTER_STRATEGY = env_str("LLMSITE_ROUTER_STRATEGY", "balanced")
LLMSITE_ROUTER_FAILURES = env_int("LLMSITE_ROUTER_FAILURES", 3, minimum=1)
LLMSITE_ROUTER_COOLDOWN = env_int("LLMSITE_ROUTER_COOLDOWN", 30, minimum=0)
LLMSITE_ROUTER_TIMEOUT = env_int("LLMSITE_ROUTER_TIMEOUT", 60, minimum=1)
LLMSITE_MESSAGES_PING_S = env_int("LLMSITE_MESSAGES_PING_S", 10, minimum=1)
# Stored /v1/responses answers (store: true) expire after this; expired rows answer 404.
LLMSITE_RESPONSES_RETENTION_DAYS = env_int("LLMSITE_RESPONSES_RETENTION_DAYS", 30, minimum=1)
LLMSITE_WS_AUTH_TIMEOUT = env_int("LLMSITE_WS_AUTH_TIMEOUT", 10, minimum=1)
LLMSITE_REMOTE_TIMEOUT = env_int("LLMSITE_REMOTE_TIMEOUT", 120, minimum=1)
LLMSITE_REMOTE_CONNECT_TIMEOUT = env_int("LLMSITE_REMOTE_CONNECT_TIMEOUT", 5, minimum=1)
LLMSITE_MEMORY_BUDGET_MB = env_int("LLMSITE_MEMORY_BUDGET_MB", 0, minimum=0)
LLMSITE_BATCH_MAX = env_int("LLMSITE_BATCH_MAX", 32, minimum=1)
LLMSITE_WEB_PROCESSES = env_int("LLMSITE_WEB_PROCESSES", min(8, os.cpu_count() or 1), minimum=1)
LLMSITE_WORKER_HANG_SECONDS = env_int("LLMSITE_WORKER_HANG_SECONDS", 30, minimum=1)
LLMSITE_DRAIN_SECONDS = env_int("LLMSITE_DRAIN_SECONDS", 30, minimum=0)
# Set by `manage.py serve` for the gateway processes it starts: the run dir of
# the supervisor whose model workers they submit to. Unset: in-process engines
# (what unit tests and a bare `daphne` get).
LLMSITE_SUPERVISOR = env_str("LLMSITE_SUPERVISOR").strip()
# Wiring, not configuration: a key's model allow-list may name only models its
# tenant may use. inference owns that query; accounts calls it by this path, so
# it never imports inference.
LLMSITE_TENANT_MODELS = "inference.selectors.model_queryset"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LLMSITE_LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.request": {"level": "ERROR"}},
}
