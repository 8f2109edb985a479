"""System checks: every misconfiguration has an id and a hint."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from channels_presence.checks import check_presence

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
REDIS_LAYER = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}


def ids(**settings: Any) -> list[str]:
    with override_settings(**settings):
        return [m.id for m in check_presence()]  # type: ignore[misc]


def test_the_embedded_default_passes() -> None:
    assert ids() == []


def test_invalid_setting_is_e001() -> None:
    assert ids(CHANNELS_PRESENCE={"MAX_SESSIONS": 0}) == ["channels_presence.E001"]


def test_missing_channels_app_is_e002() -> None:
    with override_settings(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "channels_presence"]
    ):
        assert "channels_presence.E002" in [m.id for m in check_presence()]


def test_unknown_cache_alias_is_e003() -> None:
    assert ids(CHANNELS_PRESENCE={"CACHE": "presence"}) == ["channels_presence.E003"]


def test_dummy_cache_is_e004() -> None:
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    assert ids(CACHES=dummy) == ["channels_presence.E004"]


def test_no_channel_layer_is_e005() -> None:
    assert ids(CHANNEL_LAYERS={}) == ["channels_presence.E005"]


SENTINEL_FACTORY = "django_redis.pool.SentinelConnectionFactory"


@pytest.mark.parametrize(
    ("options", "location", "named"),
    [
        (
            {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": SENTINEL_FACTORY,
            },
            "redis://svc/0",
            "OPTIONS['SENTINELS']",
        ),
        ({"CONNECTION_FACTORY": SENTINEL_FACTORY}, "redis://svc/0", "SENTINELS"),
        (
            {"CONNECTION_FACTORY": SENTINEL_FACTORY, "SENTINELS": [("127.0.0.1", "x")]},
            "redis://svc/0",
            "('127.0.0.1', 'x')",
        ),
        (
            {"CONNECTION_FACTORY": SENTINEL_FACTORY, "SENTINELS": [("127.0.0.1", 26379)]},
            "unix:///tmp/redis.sock",
            "unix:///tmp/redis.sock",
        ),
        (
            {"CLIENT_CLASS": "django_redis.client.SentinelClient", "SENTINELS": [("h", 1)]},
            "redis://svc/0",
            "DJANGO_REDIS_CONNECTION_FACTORY",
        ),
    ],
    ids=[
        "client-without-sentinels",
        "factory-without-sentinels",
        "bad-pair",
        "no-service",
        "no-factory",
    ],
)
def test_incomplete_sentinel_setup_is_e006(
    options: dict[str, Any], location: str, named: str
) -> None:
    cache = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": location,
            "OPTIONS": options,
        }
    }
    with override_settings(CACHES=cache):
        messages = check_presence()
    assert [m.id for m in messages] == ["channels_presence.E006"]
    assert named in messages[0].msg


def test_sentinel_pool_on_djangos_redis_cache_is_e006() -> None:
    cache = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:26379",
            "OPTIONS": {"pool_class": "redis.sentinel.SentinelConnectionPool"},
        }
    }
    with override_settings(CACHES=cache):
        messages = check_presence()
    assert [m.id for m in messages] == ["channels_presence.E006"]
    assert "no Sentinel support" in messages[0].msg


def test_complete_sentinel_setup_passes() -> None:
    cache = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://svc/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "SENTINELS": [("127.0.0.1", 26379)],
            },
        }
    }
    with override_settings(CACHES=cache, DJANGO_REDIS_CONNECTION_FACTORY=SENTINEL_FACTORY):
        assert check_presence() == []


def test_per_process_cache_with_cross_process_layer_is_w001() -> None:
    messages = None
    with override_settings(CACHES=LOCMEM, CHANNEL_LAYERS=REDIS_LAYER):
        messages = check_presence()
    assert [m.id for m in messages] == ["channels_presence.W001"]
    assert "Redis" in (messages[0].hint or "")


def test_shared_non_redis_cache_is_w002() -> None:
    db_cache = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "t"}
    }
    assert ids(CACHES=db_cache) == ["channels_presence.W002"]


def test_redis_cache_with_redis_layer_passes() -> None:
    redis_cache = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    assert ids(CACHES=redis_cache, CHANNEL_LAYERS=REDIS_LAYER) == []
