"""Glassbox settings, driven by environment variables.

Every value has a default that runs the embedded deployment (SQLite, in-process channel
layer, filesystem Celery broker, offline model server). Bad values fail loudly at start.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GLASSBOX_DATA_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str = "") -> str:
    """A string from the environment, or from the file named by NAME_FILE (secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false)")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc
    if not lo <= value <= hi:
        raise ImproperlyConfigured(f"{name}={value} must be between {lo} and {hi}")
    return value


# --- core -------------------------------------------------------------------------------
DEBUG = env_bool("GLASSBOX_DEBUG", False)
PRODUCTION = env_bool("GLASSBOX_PRODUCTION", False)
SECRET_KEY = env_str("GLASSBOX_SECRET_KEY") or "insecure-embedded-default-key-change-me"
ALLOWED_HOSTS = [
    h for h in env_str("GLASSBOX_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("GLASSBOX_CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials.apps.SimpleAppConfig",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "chat.urls"
ASGI_APPLICATION = "chat.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.glassbox",
            ],
            "loaders": [
                (
                    "template_partials.loader.Loader",
                    [
                        (
                            "django.template.loaders.cached.Loader",
                            [
                                "django.template.loaders.filesystem.Loader",
                                "django.template.loaders.app_directories.Loader",
                            ],
                        )
                    ],
                )
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    }
]

# --- database ---------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'glassbox.sqlite3'}"
# Web processes close a connection at the end of each request: under ASGI every request may
# run in a thread of its own, and kept connections would pile up past the server's limit.
# Celery worker processes keep theirs (chat/celery.py); turn runners use a few threads of
# their own whose connections live as long as the process.
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
}
WORKER_CONN_MAX_AGE = 60
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the worker writes; a busy timeout instead of
    # "database is locked" errors when both write at once.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- channel layer and Celery -----------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # Pub/sub layer: the default RedisChannelLayer drops bursts past `capacity` (stack notes).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    # A slow tab must not lose frames in a burst (the default capacity is 100).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.layers.EmbeddedChannelLayer",
            "CONFIG": {"capacity": 2000},
        }
    }
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT = "chat.fsbroker:Transport"
    _broker_dir = DATA_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.02,
    }
    # Every process that sends or receives needs these folders; creating them here means no
    # process can start before they exist.
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- model provider ---------------------------------------------------------------------
PROVIDER_PRESETS: dict[str, str] = {
    "moonshot": "https://api.moonshot.ai/v1",
    "cometapi": "https://api.cometapi.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "vllm": "http://127.0.0.1:8000/v1",
}
GLASSBOX_PROVIDER = env_str("GLASSBOX_PROVIDER").lower()
GLASSBOX_API_KEY = env_str("GLASSBOX_API_KEY")
if (
    GLASSBOX_PROVIDER
    and GLASSBOX_PROVIDER not in PROVIDER_PRESETS
    and GLASSBOX_PROVIDER != "offline"
):
    raise ImproperlyConfigured(
        f"GLASSBOX_PROVIDER={GLASSBOX_PROVIDER!r}: use one of "
        f"{', '.join(sorted(PROVIDER_PRESETS))} or offline, or set GLASSBOX_BASE_URL"
    )
if not GLASSBOX_PROVIDER:
    GLASSBOX_PROVIDER = "custom" if env_str("GLASSBOX_BASE_URL") else "offline"
GLASSBOX_OFFLINE_PORT = env_int("GLASSBOX_OFFLINE_PORT", 8765, minimum=1)
GLASSBOX_BASE_URL = env_str("GLASSBOX_BASE_URL") or PROVIDER_PRESETS.get(
    GLASSBOX_PROVIDER, f"http://127.0.0.1:{GLASSBOX_OFFLINE_PORT}/v1"
)
GLASSBOX_MODEL = env_str("GLASSBOX_MODEL", "kimi-k2-thinking")
GLASSBOX_TEMPERATURE = env_float("GLASSBOX_TEMPERATURE", 1.0, 0.0, 2.0)
GLASSBOX_MAX_TOKENS = env_int("GLASSBOX_MAX_TOKENS", 32000, minimum=1)
GLASSBOX_REQUEST_TIMEOUT = env_int("GLASSBOX_REQUEST_TIMEOUT", 600, minimum=1)
GLASSBOX_MAX_RETRIES = env_int("GLASSBOX_MAX_RETRIES", 3, minimum=0)

# --- chat limits and streaming ----------------------------------------------------------
GLASSBOX_MAX_MESSAGE_CHARS = env_int("GLASSBOX_MAX_MESSAGE_CHARS", 100_000, minimum=1)
# Deltas are coalesced: at most one frame per window per message, or earlier past the size.
GLASSBOX_COALESCE_MS = env_int("GLASSBOX_COALESCE_MS", 100, minimum=0)
GLASSBOX_COALESCE_CHARS = env_int("GLASSBOX_COALESCE_CHARS", 4000, minimum=1)
GLASSBOX_CHECKPOINT_SECONDS = env_float("GLASSBOX_CHECKPOINT_SECONDS", 1.0, 0.05, 60.0)
# A streaming turn whose heartbeat is older than this is marked interrupted by the sweeper.
GLASSBOX_HEARTBEAT_TIMEOUT = env_int("GLASSBOX_HEARTBEAT_TIMEOUT", 15, minimum=2)

# --- tools and the agent loop ----------------------------------------------------------
GLASSBOX_MAX_STEPS = env_int("GLASSBOX_MAX_STEPS", 300, minimum=1)
GLASSBOX_SEARXNG_URL = env_str("GLASSBOX_SEARXNG_URL")
# How often a runner checks the database for tool results. With Redis the worker also
# notifies the runner at once, so the poll is only a safety net.
GLASSBOX_TOOL_POLL_MS = env_int("GLASSBOX_TOOL_POLL_MS", 250 if REDIS_URL else 10, minimum=1)
GLASSBOX_TOOL_GRACE_SECONDS = env_int("GLASSBOX_TOOL_GRACE_SECONDS", 15, minimum=1)
GLASSBOX_TOOL_QUEUE_TIMEOUT = env_int("GLASSBOX_TOOL_QUEUE_TIMEOUT", 120, minimum=1)
GLASSBOX_TOOL_RESULT_CHARS = env_int("GLASSBOX_TOOL_RESULT_CHARS", 20_000, minimum=100)
GLASSBOX_TOOL_STORED_CHARS = env_int("GLASSBOX_TOOL_STORED_CHARS", 1_000_000, minimum=100)

# --- auth, static, misc -----------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
STATIC_URL = "/static/"
# Collected files are only needed in production; in development WhiteNoise uses the finders.
STATIC_ROOT = DATA_DIR / "static" if PRODUCTION else None
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("GLASSBOX_LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}
