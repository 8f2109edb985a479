"""Settings for the channels-presence demo site.

Two modes, chosen by the environment:

* no ``REDIS_URL``: the embedded default. Local-memory cache, in-memory
  channel layer, SQLite. One server process.
* ``REDIS_URL=redis://...``: the Redis cache and ``channels_redis``. Presence
  then lives in Redis (channels_presence picks its Redis store because the
  cache is a Redis cache), so several server processes share it.

``DEMO_DATABASE`` moves the SQLite file (the browser tests use a temporary one).
``DEMO_PRESENCE``, a JSON object, is laid over ``CHANNELS_PRESENCE`` (try
``{"ON_LIMIT": "reject_new"}``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# A demo that only ever listens on localhost; never reuse this key.
SECRET_KEY = os.environ.get("DEMO_SECRET_KEY", "demo-only-insecure-key-do-not-deploy")
DEBUG = os.environ.get("DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    # The admin shows channels_presence's "Presence" pages (sign in as admin).
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "channels_presence",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo_site.urls"
ASGI_APPLICATION = "demo_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE") or BASE_DIR / "db.sqlite3",
        # Two servers may share the file in Redis mode: wait for a lock, don't fail.
        "OPTIONS": {"timeout": 20},
    }
}

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    _redis_cache = (
        "django_redis.cache.RedisCache"
        if importlib.util.find_spec("django_redis")
        else "django.core.cache.backends.redis.RedisCache"
    )
    CACHES = {"default": {"BACKEND": _redis_cache, "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 times out reads after 5 s, as long as channels_redis
            # waits for a message (an idle consumer would see a TimeoutError),
            # and its pool of 100 connections is small for a busy server.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 1000}]
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CHANNELS_PRESENCE = {
    # One live session per account: signing in elsewhere closes it (code 4001).
    "MAX_SESSIONS": 1,
    # A session is a log-in, so the tabs of one browser live side by side.
    "SESSION_SCOPE": "session",
    **json.loads(os.environ.get("DEMO_PRESENCE") or "{}"),
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "lobby"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "channels_presence": {"handlers": ["console"], "level": "INFO"},
        "chat": {"handlers": ["console"], "level": "INFO"},
    },
}
