"""Settings of the end-to-end project, driven by environment variables.

``REDIS_URL``            Redis for the presence cache (required).
``E2E_LAYER_REDIS_URL``  Redis for the channel layer (default: ``REDIS_URL``).
``E2E_DB_PATH``          the SQLite file every server shares (users, sessions).
``E2E_PRESENCE``         JSON object used as ``CHANNELS_PRESENCE``.
``E2E_KEY_PREFIX``       keeps one test's Redis keys apart from another's.
``E2E_CACHE_BACKEND``    ``django_redis`` (default) or ``django`` (Django's RedisCache).
``E2E_SENTINELS``        JSON list of ``[host, port]``: the presence cache is behind
                         Redis Sentinel (django-redis's SentinelClient), ``REDIS_URL``
                         being ``redis://<service name>/<db>``.
``E2E_SERVER_NAME``      a label each server reports, e.g. ``a`` or ``b``.
``E2E_RECORD_EVENTS``    ``1``: record every presence signal (see :mod:`.recorder`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REDIS_URL = os.environ["REDIS_URL"]
LAYER_REDIS_URL = os.environ.get("E2E_LAYER_REDIS_URL") or REDIS_URL
KEY_PREFIX = os.environ.get("E2E_KEY_PREFIX", "e2e")
SERVER_NAME = os.environ.get("E2E_SERVER_NAME", "server")
#: The channel layer's own prefix, so tests can look at its keys.
LAYER_PREFIX = f"{KEY_PREFIX}-layer"
#: The list on the layer Redis that recorded presence signals go to.
EVENTS_KEY = f"{KEY_PREFIX}-events"
RECORD_EVENTS = os.environ.get("E2E_RECORD_EVENTS") == "1"

SECRET_KEY = "channels-presence-e2e"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "tests.e2e.project.urls"
ASGI_APPLICATION = "tests.e2e.project.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_REDIRECT_URL = "/whoami/"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
]
# E2E_PLAIN=1: a site without channels_presence, for the harness's self-test.
if os.environ.get("E2E_PLAIN") != "1":
    INSTALLED_APPS.append("channels_presence")
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [Path(__file__).resolve().parent / "templates"],
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("E2E_DB_PATH", ":memory:"),
        # Several server processes write sessions into one file: wait for
        # the lock instead of failing, and take it up front.
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}

_CACHE_BACKENDS = {
    "django_redis": "django_redis.cache.RedisCache",
    "django": "django.core.cache.backends.redis.RedisCache",
}
CACHES = {
    "default": {
        "BACKEND": _CACHE_BACKENDS[os.environ.get("E2E_CACHE_BACKEND", "django_redis")],
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIX,
    }
}
if os.environ.get("E2E_SENTINELS"):
    # As django-redis documents Sentinel (the factory given per cache here).
    CACHES["default"]["OPTIONS"] = {
        "CLIENT_CLASS": "django_redis.client.SentinelClient",
        "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
        "SENTINELS": [tuple(pair) for pair in json.loads(os.environ["E2E_SENTINELS"])],
    }

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # Two redis-py 8 defaults that break channels_redis 4.3 under test: a 5 s
        # socket timeout (channels_redis blocks 5 s in BZPOPMIN, so an idle
        # consumer dies of a read timeout) and at most 100 connections per pool
        # (more concurrent layer calls fail with "Too many connections").
        "CONFIG": {
            "hosts": [{"address": LAYER_REDIS_URL, "socket_timeout": 15, "max_connections": 5000}],
            "prefix": LAYER_PREFIX,
        },
    }
}

CHANNELS_PRESENCE = {"KEY_PREFIX": KEY_PREFIX, **json.loads(os.environ.get("E2E_PRESENCE", "{}"))}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": f"[{SERVER_NAME}] %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "channels_presence": {"handlers": ["stderr"], "level": "DEBUG"},
        "django": {"handlers": ["stderr"], "level": "WARNING"},
    },
}
