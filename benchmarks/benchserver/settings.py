"""Settings for the benchmark server; everything variable comes from the environment.

- ``BENCH_VARIANT``: ``bare``, ``presence`` or ``peer``.
- ``BENCH_REDIS_URL``: the Redis of the presence store (``CACHES["default"]``).
- ``BENCH_LAYER_REDIS_URL``: the Redis of the channel layer and of the session
  cache; defaults to ``BENCH_REDIS_URL`` (one Redis for everything).
- ``BENCH_DB``: the SQLite file (users, and the peer's rooms and presences).
- ``BENCH_TTL`` / ``BENCH_HEARTBEAT``: optional presence TTL and heartbeat, seconds.

The presence variant runs with the package's defaults (``MAX_SESSIONS=1``,
``close_oldest``, ``LEAVE_GRACE`` 3 s, ...) but for those two, which the
benchmarks shorten so their windows contain heartbeats.
"""

import os

VARIANT = os.environ.get("BENCH_VARIANT", "bare")
if VARIANT not in ("bare", "presence", "peer"):
    raise RuntimeError(f"BENCH_VARIANT is {VARIANT!r}; it must be bare, presence or peer")

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")
LAYER_REDIS_URL = os.environ.get("BENCH_LAYER_REDIS_URL", REDIS_URL)

SECRET_KEY = "channels-presence-benchmarks"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "benchserver.urls"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
]
if VARIANT in ("presence", "peer"):
    # The same import name: this package in the main environment, the peer in its own.
    INSTALLED_APPS.append("channels_presence")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB", "/tmp/channels-presence-bench.sqlite3"),
        # Writers wait for the lock instead of failing under concurrent connects.
        "OPTIONS": {"timeout": 30},
    }
}
CACHES = {
    "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL},
    "sessions": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": LAYER_REDIS_URL},
}
# Sessions in Redis: an authenticated connect costs one GET and one user query.
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
SESSION_CACHE_ALIAS = "sessions"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py >= 8 times reads out after 5 s by default, which is exactly
        # channels_redis's BZPOPMIN wait: every idle consumer's receive would fail.
        "CONFIG": {"hosts": [{"address": LAYER_REDIS_URL, "socket_timeout": 30}]},
    }
}
ASGI_APPLICATION = "benchserver.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

if VARIANT == "presence":
    CHANNELS_PRESENCE: dict[str, float] = {}
    if os.environ.get("BENCH_TTL"):
        CHANNELS_PRESENCE["TTL"] = float(os.environ["BENCH_TTL"])
    if os.environ.get("BENCH_HEARTBEAT"):
        CHANNELS_PRESENCE["HEARTBEAT"] = float(os.environ["BENCH_HEARTBEAT"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
