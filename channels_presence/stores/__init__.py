"""Where presence lives: the store is chosen from the cache named by ``CACHE``.

A Redis cache (django-redis or Django's own ``RedisCache``) gets the Redis
store, which is correct across processes and servers; a django-redis cache
behind Redis Sentinel gets it on the primary the sentinels name. Any other cache gets the
embedded store on Django's cache API, which is correct within one process.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import get_settings
from .base import (
    Connection,
    ConnectResult,
    Departure,
    GroupMember,
    PresenceStore,
    RefreshResult,
    SessionPolicy,
)
from .local import LocalStore
from .sentinel import sentinel_settings

__all__ = [
    "REDIS_BACKENDS",
    "ConnectResult",
    "Connection",
    "Departure",
    "GroupMember",
    "PresenceStore",
    "RefreshResult",
    "SessionPolicy",
    "get_store",
    "is_redis_backend",
    "reset_store",
    "session_policy",
]

REDIS_BACKENDS = (
    "django_redis.cache.RedisCache",
    "django.core.cache.backends.redis.RedisCache",
)
# Caches that live inside one process: presence in them is not shared.
PER_PROCESS_BACKENDS = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)

_store: PresenceStore | None = None
_lock = threading.Lock()


def cache_config(alias: str) -> dict[str, Any]:
    """The ``CACHES`` entry for ``alias``, or a clear error naming it."""
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        known = ", ".join(repr(a) for a in caches) or "none"
        raise ImproperlyConfigured(
            f"CHANNELS_PRESENCE['CACHE'] is {alias!r}, but CACHES has no such alias "
            f"(configured: {known})."
        )
    config: dict[str, Any] = caches[alias]
    return config


def is_redis_backend(backend: str) -> bool:
    """Whether a cache ``BACKEND`` path is one the Redis store can reuse."""
    return backend in REDIS_BACKENDS


def _build() -> PresenceStore:
    conf = get_settings()
    config = cache_config(conf.CACHE)
    backend = config.get("BACKEND", "")
    if is_redis_backend(backend):
        # Read first: a half-done Sentinel set-up fails here, naming what is missing.
        sentinel = sentinel_settings(config, cluster=conf.REDIS_CLUSTER)
        if conf.REDIS_CLUSTER:
            from .cluster import ClusterRedisStore

            return ClusterRedisStore.from_cache_config(config, conf, sentinel)
        from .redis import RedisStore

        return RedisStore.from_cache_config(config, conf, sentinel)
    if conf.REDIS_CLUSTER:
        raise ImproperlyConfigured(
            f"CHANNELS_PRESENCE['REDIS_CLUSTER'] is True, but the cache {conf.CACHE!r} has "
            f"BACKEND {backend!r}; a Redis Cluster needs one of {', '.join(REDIS_BACKENDS)} "
            "(presence reads its LOCATION and OPTIONS; Django never opens it as a cache)."
        )
    return LocalStore(conf.CACHE, prefix=conf.KEY_PREFIX, ttl=conf.TTL, grace=conf.LEAVE_GRACE)


def get_store() -> PresenceStore:
    """The process's store, built on first use from the current settings."""
    global _store
    store = _store
    if store is None:
        with _lock:
            if _store is None:
                _store = _build()
            store = _store
    return store


def session_policy() -> SessionPolicy:
    """The session policy of the current settings, as the stores take it."""
    conf = get_settings()
    return SessionPolicy(
        max_sessions=conf.MAX_SESSIONS,
        scope=conf.SESSION_SCOPE,  # type: ignore[arg-type]
        on_limit=conf.ON_LIMIT,  # type: ignore[arg-type]
        max_connections=conf.MAX_CONNECTIONS_PER_USER,
        close_code=conf.CLOSE_CODE,
    )


def reset_store() -> None:
    """Forget the current store and close it; the next :func:`get_store` builds a new one.

    Its clients are closed at once where that needs no wait (the sync one,
    those of other running loops); one of the running loop is closed by a task.
    """
    global _store
    with _lock:
        old, _store = _store, None
    if old is not None:
        old.close()


@receiver(setting_changed)
def _reset_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CHANNELS_PRESENCE", "CACHES"):
        reset_store()
