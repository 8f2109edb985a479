"""Django system checks: misconfigurations found at startup, each with an id and a hint.

========================  =====================================================
``channels_presence.E001``  ``CHANNELS_PRESENCE`` is invalid
``channels_presence.E002``  ``channels`` is not in ``INSTALLED_APPS``
``channels_presence.E003``  ``CHANNELS_PRESENCE['CACHE']`` names no cache
``channels_presence.E004``  the presence cache is ``DummyCache`` (stores nothing)
``channels_presence.E005``  no channel layer in ``CHANNEL_LAYERS``
``channels_presence.E006``  the presence cache's Redis Sentinel set-up is incomplete
``channels_presence.W001``  a per-process cache with a cross-process channel layer
``channels_presence.W002``  a shared cache that is not Redis (not atomic)
``channels_presence.W003``  the Redis store's client library is missing
========================  =====================================================
"""

from __future__ import annotations

import importlib.util
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .conf import SETTING_NAME, build_settings
from .stores import PER_PROCESS_BACKENDS, is_redis_backend
from .stores.sentinel import sentinel_settings

_PER_PROCESS_LAYERS = ("channels.layers.InMemoryChannelLayer",)


@register(Tags.compatibility, "channels_presence")
def check_presence(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every channels-presence check, in one pass."""
    try:
        conf = build_settings(getattr(settings, SETTING_NAME, None))
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="Fix the value in settings.CHANNELS_PRESENCE; the README lists every key.",
                id="channels_presence.E001",
            )
        ]
    errors: list[CheckMessage] = []
    if not apps.is_installed("channels"):
        errors.append(
            Error(
                "'channels' is not in INSTALLED_APPS.",
                hint="Add 'channels' to INSTALLED_APPS, before 'channels_presence'.",
                id="channels_presence.E002",
            )
        )
    caches: dict[str, Any] = getattr(settings, "CACHES", {})
    cache = caches.get(conf.CACHE)
    layers: dict[str, Any] = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    layer_backend = str(layers.get("default", {}).get("BACKEND", ""))
    if cache is None:
        errors.append(
            Error(
                f"CHANNELS_PRESENCE['CACHE'] is {conf.CACHE!r}, but CACHES has no such alias.",
                hint=f"Use one of: {', '.join(caches) or '(no caches configured)'}.",
                id="channels_presence.E003",
            )
        )
    else:
        backend = str(cache.get("BACKEND", ""))
        if backend == "django.core.cache.backends.dummy.DummyCache":
            errors.append(
                Error(
                    f"The presence cache {conf.CACHE!r} is DummyCache, which stores nothing: "
                    "every population would read 0.",
                    hint="Point CHANNELS_PRESENCE['CACHE'] at a local-memory or Redis cache.",
                    id="channels_presence.E004",
                )
            )
        elif (
            backend in PER_PROCESS_BACKENDS
            and layer_backend
            and (layer_backend not in _PER_PROCESS_LAYERS)
        ):
            errors.append(
                Warning(
                    f"The presence cache {conf.CACHE!r} ({backend.rsplit('.', 1)[-1]}) lives in "
                    f"one process, but the channel layer ({layer_backend}) spans processes: "
                    "each process sees only its own connections and single-session "
                    "enforcement cannot reach the others.",
                    hint="Use a Redis cache (django_redis.cache.RedisCache or Django's "
                    "RedisCache) for CHANNELS_PRESENCE['CACHE'].",
                    id="channels_presence.W001",
                )
            )
        elif backend not in PER_PROCESS_BACKENDS and not is_redis_backend(backend):
            errors.append(
                Warning(
                    f"The presence cache {conf.CACHE!r} ({backend}) is neither Redis nor local "
                    "memory: presence on it is correct within one process only.",
                    hint="Use a Redis cache for presence across processes.",
                    id="channels_presence.W002",
                )
            )
        elif is_redis_backend(backend) and (error := _sentinel_error(cache, conf.REDIS_CLUSTER)):
            errors.append(
                Error(
                    error,
                    hint="Presence follows the cache's own Sentinel settings; see the README's "
                    "'Sentinel' section.",
                    id="channels_presence.E006",
                )
            )
        elif is_redis_backend(backend) and importlib.util.find_spec("redis") is None:
            errors.append(
                Warning(
                    "The presence cache is Redis, but the 'redis' package is not installed.",
                    hint="pip install 'channels-presence[redis]'.",
                    id="channels_presence.W003",
                )
            )
    if not layer_backend:
        errors.append(
            Error(
                "CHANNEL_LAYERS has no 'default' layer; presence closes superseded "
                "connections and joins groups through it.",
                hint="For one process: CHANNEL_LAYERS = {'default': {'BACKEND': "
                "'channels.layers.InMemoryChannelLayer'}}; in production channels_redis.",
                id="channels_presence.E005",
            )
        )
    return errors


def _sentinel_error(cache: dict[str, Any], cluster: bool) -> str:
    """What is wrong with the cache's Sentinel settings, or ``""``."""
    try:
        sentinel_settings(cache, cluster=cluster)
    except ImproperlyConfigured as exc:
        return str(exc)
    return ""
