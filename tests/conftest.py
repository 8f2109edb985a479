"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from channels_presence import closing, listeners
from channels_presence.logs import store_failures
from channels_presence.stores import reset_store
from channels_presence.stores.local import clear_process_memory
from tests.redis_cluster import RedisCluster, cluster_binaries
from tests.redis_sentinel import SentinelSetup, find_redis_sentinel
from tests.redis_server import RedisServer, find_redis_server, free_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Other work shares the machine: judge hypothesis tests by their findings, not speed.
hypothesis_settings.register_profile(
    "presence", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
hypothesis_settings.load_profile("presence")


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
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster of three primaries (redis-cli --cluster create), for the session."""
    found = cluster_binaries()
    if isinstance(found, str):
        _no_redis(found)
    cluster = RedisCluster(*found)  # type: ignore[misc]
    try:
        cluster.start()
    except (OSError, TimeoutError, subprocess.SubprocessError) as exc:
        cluster.close()
        _no_redis(f"a Redis Cluster could not be started: {exc}")
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    """The URL of a Redis the tests may write to."""
    if redis_server is not None:
        return redis_server.url
    url = os.environ["REDIS_URL"]
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        _no_redis(f"REDIS_URL={url!r} does not answer: {exc}")
    return url


def _no_sentinel(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true needs Redis Sentinel, but {reason}", pytrace=False)
    pytest.skip(f"Sentinel tests skipped: {reason}")


def start_sentinel_setup(replicas: int = 1) -> SentinelSetup:
    """A running primary, ``replicas`` replicas and three sentinels, or a skip saying why not."""
    server, sentinel = find_redis_server(), find_redis_sentinel()
    if server is None or sentinel is None:
        missing = "redis-server" if server is None else "redis-sentinel"
        _no_sentinel(f"no {missing} binary was found on PATH (apt-get install {missing})")
    setup = SentinelSetup(server, sentinel, replicas=replicas)  # type: ignore[arg-type]
    try:
        setup.start()
    except (OSError, TimeoutError, redis.RedisError) as exc:
        setup.close()
        _no_sentinel(f"the Sentinel set-up could not be started: {exc}")
    return setup


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[SentinelSetup]:
    """One Sentinel set-up for the whole run, for tests that never fail it over."""
    setup = start_sentinel_setup()
    yield setup
    setup.close()


@pytest.fixture
def fresh_sentinel_setup() -> Iterator[SentinelSetup]:
    """A Sentinel set-up of the test's own, which it may fail over."""
    setup = start_sentinel_setup()
    yield setup
    setup.close()


@pytest.fixture
def key_prefix() -> str:
    """A KEY_PREFIX of its own for each test, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def presence_settings() -> Iterator[Any]:
    """Change CHANNELS_PRESENCE for one test: ``presence_settings(MAX_SESSIONS=2)``.

    The values are laid over the ones in force (so a Redis ``backend`` keeps
    its own KEY_PREFIX).
    """
    from django.conf import settings

    overrides: list[Any] = []

    def apply(**values: Any) -> None:
        merged = {**getattr(settings, "CHANNELS_PRESENCE", {}), **values}
        cm = override_settings(CHANNELS_PRESENCE=merged)
        cm.enable()
        overrides.append(cm)

    yield apply
    for cm in reversed(overrides):
        cm.disable()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: Any, key_prefix: str) -> Iterator[str]:
    """Run a test on the embedded store and on the Redis store."""
    if request.param == "local":
        yield "local"
        return
    url = request.getfixturevalue("redis_url")
    cm = override_settings(
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url}},
        CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix},
    )
    cm.enable()
    try:
        yield "redis"
    finally:
        cm.disable()


@pytest.fixture
def dead_redis(key_prefix: str) -> Iterator[None]:
    """The presence cache points at a port where nothing listens."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url}},
        CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix},
    ):
        store_failures.failures = 0
        yield
    store_failures.failures = 0


@pytest.fixture(autouse=True)
def _fresh_presence_state() -> Iterator[None]:
    """Every test starts with an empty local-memory cache, a new store and no cached sizes."""
    from django.conf import settings
    from django.core.cache import caches

    reset_store()
    listeners.reset()
    clear_process_memory()
    closing._layer_hung_until = 0.0  # a test that hung the layer leaves no trace
    for alias, config in settings.CACHES.items():
        if config["BACKEND"].endswith("LocMemCache"):
            caches[alias].clear()
    yield
    reset_store()


@pytest.fixture
def layer_sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The groups the default channel layer's ``group_send`` was called for (it still sends)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    calls: list[str] = []
    original = layer.group_send

    async def counting(group: str, message: Any) -> None:
        calls.append(group)
        await original(group, message)

    monkeypatch.setattr(layer, "group_send", counting)
    yield calls


class FakeUser:
    """What AuthMiddlewareStack puts in the scope for a logged-in user, minus the DB."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, pk: Any) -> None:
        self.pk = pk

    def __repr__(self) -> str:
        return f"FakeUser({self.pk!r})"


class FakeSession:
    def __init__(self, key: str | None) -> None:
        self.session_key = key


@pytest.fixture
async def ws() -> AsyncIterator[Any]:
    """Open websocket clients against tests.asgi; all are closed after the test.

    ``await ws("/ws/lobby/", user=1, session="s1")`` connects and returns the
    communicator; ``user=None`` is anonymous; ``expect=False`` skips the
    connected assertion.
    """
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import AnonymousUser

    from tests.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def open_ws(
        path: str = "/ws/lobby/",
        user: Any = None,
        session: str | None = None,
        app: Any = None,
        expect: bool = True,
    ) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(app or application, path)
        comm.scope["user"] = FakeUser(user) if user is not None else AnonymousUser()
        comm.scope["session"] = FakeSession(session)
        connected, _ = await comm.connect(timeout=3)
        if expect:
            assert connected, f"{path} as {user!r} was not accepted"
        opened.append(comm)
        return comm

    yield open_ws
    for comm in opened:
        # Already closed or crashed: nothing left to clean.
        with contextlib.suppress(BaseException):
            await comm.disconnect(timeout=1)


@pytest.fixture(autouse=True)
def _allow_connection_housekeeping(django_db_blocker: Any) -> Iterator[None]:
    # Channels calls close_old_connections() around handlers; that only looks
    # at the connection, but pytest-django would refuse even that.
    with django_db_blocker.unblock():
        yield
