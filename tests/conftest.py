"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from channels_presence.stores import reset_store
from tests.redis_server import RedisServer, find_redis_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _no_redis(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true needs Redis, but {reason}", pytrace=False)
    pytest.skip(f"Redis tests skipped: {reason}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """Our own throwaway redis-server, or None when REDIS_URL points elsewhere."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    binary = find_redis_server()
    if binary is None:
        _no_redis("REDIS_URL is not set and no redis-server binary was found on PATH")
    server = RedisServer(binary)  # type: ignore[arg-type]
    try:
        server.start()
    except (OSError, TimeoutError) as exc:
        server.close()
        _no_redis(f"redis-server could not be started: {exc}")
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    """The URL of a Redis the tests may write to."""
    if redis_server is not None:
        return redis_server.url
    url = os.environ["REDIS_URL"]
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _no_redis(f"REDIS_URL={url!r} does not answer: {exc}")
    return url


@pytest.fixture
def key_prefix() -> str:
    """A KEY_PREFIX of its own for each test, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def presence_settings() -> Iterator[Any]:
    """Change CHANNELS_PRESENCE for one test: ``presence_settings(MAX_SESSIONS=2)``."""
    overrides: list[Any] = []

    def apply(**values: Any) -> None:
        cm = override_settings(CHANNELS_PRESENCE=values)
        cm.enable()
        overrides.append(cm)

    yield apply
    for cm in reversed(overrides):
        cm.disable()


@pytest.fixture(autouse=True)
def _fresh_presence_state() -> Iterator[None]:
    """Every test starts with an empty local-memory cache and a new store."""
    from django.conf import settings
    from django.core.cache import caches

    reset_store()
    for alias, config in settings.CACHES.items():
        if config["BACKEND"].endswith("LocMemCache"):
            caches[alias].clear()
    yield
    reset_store()
