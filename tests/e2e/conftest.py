"""Fixtures of the end-to-end tests: the shared database, server clusters, clients."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Clients, Cluster, ServerConfig, setup_database
from tests.redis_sentinel import SentinelSetup
from tests.redis_server import RedisServer, find_redis_server

#: Users the shared database holds; every one has the password harness.PASSWORD.
USERNAMES = ("alice", "bob", "carol", "dave")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome so fixtures can print server logs on failure.
    report = yield
    setattr(item, f"e2e_report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"e2e_report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the shared database and the server logs."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def e2e_users(e2e_dir: Path, redis_url: str) -> dict[str, int]:
    """Migrate the shared SQLite file once and create the users: ``{name: pk}``."""
    return setup_database(e2e_dir / "db.sqlite3", redis_url, USERNAMES)


@pytest.fixture(scope="session")
def layer_redis_url(redis_server: RedisServer | None, redis_url: str) -> Iterator[str]:
    """Redis for the channel layer: a second server of our own when we run Redis.

    Keeping the layer apart lets the tests stop or flush the presence Redis
    without taking the channel layer (and so every consumer) down with it.
    With an external ``REDIS_URL`` both share it.
    """
    binary = find_redis_server()
    if redis_server is None or binary is None:
        yield redis_url
        return
    layer = RedisServer(binary)
    layer.start()
    yield layer.url
    layer.close()


@pytest.fixture(scope="session")
def create_users(e2e_dir: Path, e2e_users: dict[str, int], redis_url: str) -> Callable[..., Any]:
    """``create_users(names)``: more users in the shared database; returns ``{name: pk}``.

    For the tests that need dozens of users; the password is harness.PASSWORD.
    Users that exist already are kept (their password is set again).
    """

    def create(names: Iterable[str]) -> dict[str, int]:
        return setup_database(e2e_dir / "db.sqlite3", redis_url, names)

    return create


@pytest.fixture
def start_cluster(
    request: pytest.FixtureRequest,
    e2e_dir: Path,
    e2e_users: dict[str, int],
    redis_url: str,
    layer_redis_url: str,
) -> Iterator[Callable[..., Cluster]]:
    """Start servers: ``start_cluster(presence={...}, names=("a", "b"), kind="uvicorn")``.

    ``sentinel=setup`` puts the presence cache behind that Sentinel set-up
    (the channel layer stays on its own Redis, or ``layer_redis_url``);
    ``presence_url`` puts it elsewhere (a Redis Cluster node).

    ``record_events=True`` makes them record every presence signal (see
    ``harness.recorded_events``). ``layer_redis_url`` puts the channel layer
    on another Redis than the session's layer server (the presence Redis, to
    share one as production often does).

    Each call gets key prefixes of its own. Every server is stopped at
    teardown, and its log is printed when the test failed.
    """
    clusters: list[Cluster] = []

    def start(
        presence: dict[str, Any] | None = None,
        *,
        names: tuple[str, ...] = ("a", "b"),
        kind: str | tuple[str, ...] = "uvicorn",
        cache_backend: str = "django_redis",
        presence_enabled: bool = True,
        record_events: bool = False,
        sentinel: SentinelSetup | None = None,
        layer_redis_url: str = layer_redis_url,
        presence_url: str | None = None,
    ) -> Cluster:
        config = ServerConfig(
            redis_url=sentinel.location() if sentinel else (presence_url or redis_url),
            sentinels=sentinel.sentinel_addresses if sentinel else None,
            layer_redis_url=layer_redis_url,
            db_path=e2e_dir / "db.sqlite3",
            log_dir=e2e_dir,
            presence=dict(presence or {}),
            cache_backend=cache_backend,
            presence_enabled=presence_enabled,
            record_events=record_events,
        )
        cluster = Cluster(config, names, kind)
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()
        if _failed(request):
            for cluster in clusters:
                sys.stderr.write(cluster.logs()[-20000:] + "\n")


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Websocket clients of one test; all closed at teardown."""
    opened = Clients()
    try:
        yield opened
    finally:
        await opened.close_all()
