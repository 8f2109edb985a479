"""Reading a Django cache's Redis Sentinel settings, with errors that say what is wrong.

django-redis documents Sentinel as a connection factory plus a client class::

    DJANGO_REDIS_CONNECTION_FACTORY = "django_redis.pool.SentinelConnectionFactory"
    CACHES = {"default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://<service name>/<db>",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "SENTINELS": [("sentinel-1", 26379), ...],
            "SENTINEL_KWARGS": {...},           # optional: how to reach the sentinels
        },
    }}

(the factory may also be given per cache as ``OPTIONS["CONNECTION_FACTORY"]``).
The presence store follows the same settings to the same primary. Django's own
``RedisCache`` has no Sentinel support; a configuration that tries (a Sentinel
pool class in its ``OPTIONS``) is refused here rather than half-working.

Nothing here imports redis: ``checks.py`` reads these settings too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "SENTINEL_CLIENT",
    "SENTINEL_FACTORY",
    "SentinelSettings",
    "sentinel_settings",
]

DJANGO_REDIS = "django_redis.cache.RedisCache"
DJANGO_REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"
SENTINEL_CLIENT = "django_redis.client.SentinelClient"
SENTINEL_FACTORY = "django_redis.pool.SentinelConnectionFactory"
_HINT = (
    "See django-redis's Sentinel set-up: LOCATION 'redis://<service name>/<db>', "
    f"OPTIONS {{'CLIENT_CLASS': {SENTINEL_CLIENT!r}, 'SENTINELS': [(host, port), ...]}} and "
    f"DJANGO_REDIS_CONNECTION_FACTORY = {SENTINEL_FACTORY!r} "
    "(or OPTIONS['CONNECTION_FACTORY'])."
)


@dataclass(frozen=True)
class SentinelSettings:
    """Where the sentinels are and how to reach them; the service is the URL's host."""

    sentinels: tuple[tuple[str, int], ...]
    #: Connection arguments for the sentinels themselves (``SENTINEL_KWARGS``);
    #: ``None``: redis-py's default, the data connections' socket timeouts.
    sentinel_kwargs: Mapping[str, Any] | None = field(default=None)


def _first_location(location: Any) -> str:
    if isinstance(location, str):
        return location.replace(";", ",").split(",")[0].strip()
    if isinstance(location, (list, tuple)) and location:
        return str(location[0])
    return ""


def _sentinel_pairs(value: Any) -> tuple[tuple[str, int], ...]:
    if not value or isinstance(value, (str, bytes)):
        raise ImproperlyConfigured(
            f"The presence cache uses Redis Sentinel, but OPTIONS['SENTINELS'] is {value!r}: "
            "it must be a non-empty list of (host, port) pairs. " + _HINT
        )
    pairs: list[tuple[str, int]] = []
    for item in value:
        try:
            host, port = item
            pairs.append((str(host), int(port)))
        except (TypeError, ValueError):
            raise ImproperlyConfigured(
                f"OPTIONS['SENTINELS'] of the presence cache holds {item!r}, which is not "
                "a (host, port) pair such as ('sentinel-1', 26379)."
            ) from None
        if not host or not 0 < pairs[-1][1] < 65536:
            raise ImproperlyConfigured(
                f"OPTIONS['SENTINELS'] of the presence cache holds {item!r}: the host must be "
                "non-empty and the port between 1 and 65535."
            )
    return tuple(pairs)


def sentinel_settings(
    config: Mapping[str, Any], *, cluster: bool = False
) -> SentinelSettings | None:
    """The Sentinel settings of a ``CACHES`` entry; ``None`` when it names one Redis.

    ``cluster`` (``REDIS_CLUSTER``): only the entry's own ``OPTIONS`` can put
    it on Sentinel, not a project-wide ``DJANGO_REDIS_CONNECTION_FACTORY``
    meant for the project's other caches.

    Follows django-redis: a cache is on Sentinel when its connection factory
    is ``SentinelConnectionFactory``. A half-done set-up (the client class or
    ``SENTINELS`` without that factory, the factory without ``SENTINELS``, a
    ``LOCATION`` that names no service) raises ``ImproperlyConfigured`` naming
    what is missing, as does a Sentinel pool given to Django's own ``RedisCache``.
    """
    backend = config.get("BACKEND")
    options: Mapping[str, Any] = config.get("OPTIONS") or {}
    if backend == DJANGO_REDIS_CACHE:
        pool_class = options.get("pool_class")
        pool_name = (
            pool_class if isinstance(pool_class, str) else getattr(pool_class, "__name__", "")
        )
        if "sentinel" in str(pool_name).lower() or "sentinel_manager" in options:
            raise ImproperlyConfigured(
                "The presence cache is Django's own RedisCache with a Sentinel connection "
                f"pool ({pool_class!r}): Django's RedisCache has no Sentinel support, and "
                "presence cannot follow a failover through it. Use django-redis's "
                "RedisCache for this cache. " + _HINT
            )
        return None
    if backend != DJANGO_REDIS:
        return None
    factory = options.get("CONNECTION_FACTORY") or (
        None if cluster else getattr(settings, "DJANGO_REDIS_CONNECTION_FACTORY", None)
    )
    client = options.get("CLIENT_CLASS")
    if factory != SENTINEL_FACTORY:
        if client == SENTINEL_CLIENT or "SENTINELS" in options:
            given = "CLIENT_CLASS SentinelClient" if client == SENTINEL_CLIENT else "SENTINELS"
            raise ImproperlyConfigured(
                f"The presence cache sets {given}, but its connection factory is "
                f"{factory or 'django_redis.pool.ConnectionFactory'!r}, which ignores "
                f"Sentinel: set DJANGO_REDIS_CONNECTION_FACTORY = {SENTINEL_FACTORY!r} "
                "(or the cache's OPTIONS['CONNECTION_FACTORY'])."
            )
        return None
    pairs = _sentinel_pairs(options.get("SENTINELS"))
    url = _first_location(config.get("LOCATION"))
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ImproperlyConfigured(
            f"The presence cache uses Redis Sentinel, but its LOCATION is {url!r}: it must be "
            "'redis://<service name>/<db>', the host being the name the sentinels "
            "monitor the primary by."
        )
    kwargs = options.get("SENTINEL_KWARGS")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ImproperlyConfigured(
            f"OPTIONS['SENTINEL_KWARGS'] of the presence cache is {kwargs!r}; it must be a "
            "dict of connection arguments for the sentinels (or left out)."
        )
    return SentinelSettings(sentinels=pairs, sentinel_kwargs=kwargs)
