"""The Redis store behind Redis Sentinel: real redis-server and redis-sentinel processes.

Settings as django-redis documents them reach the primary the sentinels name;
a real failover (the primary SIGKILLed, a replica promoted by the sentinels)
leaves the counts exact within :data:`AFTER_PROMOTION_BOUND` seconds of the
promotion (:data:`QUIET_AFTER_PROMOTION_BOUND` for a node that made no store
call meanwhile), with every socket still open, even when the promoted replica
had not got the last writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from channels_presence.exceptions import StoreUnavailable
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, SessionPolicy
from channels_presence.stores.redis import LIBRARY, RedisStore
from tests.redis_sentinel import SERVICE, SentinelSetup
from tests.redis_server import free_port

pytestmark = pytest.mark.redis

#: Presence settings of the failover tests: a failover (about 2 s here, with
#: down-after-milliseconds 500) must end well within TTL - HEARTBEAT. The
#: long HEARTBEAT shows what the quick retry after a failed store call buys.
TTL = 30
HEARTBEAT = 10
#: Seconds from the promotion to exact counts on a node that tried the store
#: during the outage (a connect, a beat): its heartbeat retries every second
#: or so (RETRY in heartbeat.py). Measured: 0.1 to 0.6 s.
AFTER_PROMOTION_BOUND = 3.0
#: The same for a node that made no store call during the outage: its next
#: regular beat, at most HEARTBEAT after the last one.
QUIET_AFTER_PROMOTION_BOUND = HEARTBEAT + 2.0
#: Seconds a promotion may take here (down-after-milliseconds 500; measured 1.5 to 3 s).
PROMOTION_BOUND = 15.0
UNLIMITED = SessionPolicy(max_sessions=None)


def conn(node: str, seq: int, user: str | None, groups: tuple[str, ...] = ()) -> Connection:
    return Connection(
        channel_name=f"specific.{node}!{seq}",
        user=user,
        session=None,
        conn_id=f"{node}.{seq}",
        groups=groups,
    )


@pytest.fixture
def sentinel_store(sentinel_setup: SentinelSetup, key_prefix: str) -> Iterator[RedisStore]:
    store = RedisStore(
        sentinel_setup.location(), sentinels=sentinel_setup.sentinel_addresses, prefix=key_prefix
    )
    yield store
    store.close()


# Settings ----------------------------------------------------------------------


def test_django_redis_sentinel_settings_reach_the_primary(
    sentinel_setup: SentinelSetup, key_prefix: str
) -> None:
    """The set-up django-redis documents (the factory as a global setting)."""
    config = sentinel_setup.cache_config()
    del config["OPTIONS"]["CONNECTION_FACTORY"]  # type: ignore[attr-defined]
    with override_settings(
        CACHES={"default": config},
        DJANGO_REDIS_CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
        CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix},
    ):
        # The cache itself works with these settings...
        caches["default"].set(f"{key_prefix}-probe", 1)
        assert caches["default"].get(f"{key_prefix}-probe") == 1
        # ...and presence lands on the same primary.
        store = get_store()
        assert isinstance(store, RedisStore)
        assert store.service == SERVICE
        assert store.sentinels == tuple(sentinel_setup.sentinel_addresses)
        store.connect(conn("nodeA", 1, "u1", ("lobby",)), UNLIMITED)
        with sentinel_setup.primary().client() as primary:
            assert primary.get(store.group_count_key("lobby")) == "1"
        assert store.group_size("lobby") == 1


def test_the_url_database_and_password_reach_the_primary(
    sentinel_setup: SentinelSetup, key_prefix: str
) -> None:
    config = sentinel_setup.cache_config(db=3)
    with override_settings(
        CACHES={"default": config}, CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix}
    ):
        get_store().connect(conn("nodeA", 1, "u1", ("lobby",)), UNLIMITED)
    with sentinel_setup.primary().client() as primary:
        primary.select(3)
        assert primary.get(f"{key_prefix}/g{{lobby}}/n") == "1"
    # Credentials and TLS in the URL go to the primary's connections, as from_url does.
    store = RedisStore(
        "rediss://me:s%40cret@presence/5", sentinels=sentinel_setup.sentinel_addresses
    )
    kwargs = store._sentinel_pool_kwargs()
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("me", "s@cret", 5)
    assert kwargs["ssl"] is True


async def test_async_and_sync_twins_share_the_primary(sentinel_store: RedisStore) -> None:
    await sentinel_store.aconnect(conn("nodeA", 1, "u1", ("lobby",)), UNLIMITED)
    sentinel_store.connect(conn("nodeA", 2, "u2", ("lobby",)), UNLIMITED)
    assert await sentinel_store.agroup_size("lobby") == 2
    assert set(sentinel_store.group_users("lobby")) == {"u1", "u2"}
    await sentinel_store.aclose()


def test_unreachable_sentinels_name_the_service_and_the_sentinels(key_prefix: str) -> None:
    ports = [free_port(), free_port()]
    store = RedisStore(
        "redis://presence/0", sentinels=[("127.0.0.1", p) for p in ports], prefix=key_prefix
    )
    with pytest.raises(StoreUnavailable) as caught:
        store.group_size("lobby")
    message = str(caught.value)
    assert "no sentinel names a primary for 'presence'" in message
    assert all(f"127.0.0.1:{p}" in message for p in ports)
    store.close()


async def test_an_unknown_service_name_is_named(
    sentinel_setup: SentinelSetup, key_prefix: str
) -> None:
    store = RedisStore(
        "redis://nosuch/0", sentinels=sentinel_setup.sentinel_addresses, prefix=key_prefix
    )
    with pytest.raises(StoreUnavailable, match="no sentinel names a primary for 'nosuch'"):
        await store.agroup_size("lobby")
    await store.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"SENTINELS": []}, "OPTIONS\\['SENTINELS'\\] is \\[\\]"),
        ({"SENTINELS": ["127.0.0.1:26379"]}, "not a \\(host, port\\) pair"),
    ],
)
def test_bad_sentinel_settings_fail_before_any_connection(
    options: dict[str, Any], message: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://presence/0",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            **options,
        },
    }
    with (
        override_settings(CACHES={"default": config}),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        get_store()


def test_sentinel_and_redis_cluster_together_are_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://presence/0",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            "SENTINELS": [("127.0.0.1", 26379)],
        },
    }
    with (
        override_settings(CACHES={"default": config}, CHANNELS_PRESENCE={"REDIS_CLUSTER": True}),
        pytest.raises(ImproperlyConfigured, match="fails over by itself"),
    ):
        get_store()


def test_a_project_wide_sentinel_factory_leaves_a_cluster_cache_alone() -> None:
    """DJANGO_REDIS_CONNECTION_FACTORY set for the project's other caches: a
    presence cache on a Redis Cluster, without Sentinel options of its own,
    is no Sentinel cache (and no error)."""
    from channels_presence.stores.sentinel import sentinel_settings

    config = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://10.0.0.1:7000"}
    with override_settings(
        DJANGO_REDIS_CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory"
    ):
        assert sentinel_settings(config, cluster=True) is None
        with pytest.raises(ImproperlyConfigured, match="SENTINELS"):
            sentinel_settings(config)


def test_djangos_redis_cache_with_a_sentinel_pool_is_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    config = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://presence/0",
        "OPTIONS": {"pool_class": "redis.sentinel.SentinelConnectionPool"},
    }
    with (
        override_settings(CACHES={"default": config}),
        pytest.raises(ImproperlyConfigured, match="Django's RedisCache has no Sentinel support"),
    ):
        get_store()


# Failover ----------------------------------------------------------------------


async def test_a_demoted_primary_is_left_for_the_new_one_without_an_error(
    fresh_sentinel_setup: SentinelSetup, key_prefix: str
) -> None:
    """A graceful failover: the old primary lives on as a replica. The sentinels
    demote it (some 10 s after the promotion: their INFO period) and close its
    clients' connections; both clients ask the sentinels again, and write to
    the new primary at the first try."""
    setup = fresh_sentinel_setup
    store = RedisStore(setup.location(), sentinels=setup.sentinel_addresses, prefix=key_prefix)
    store.connect(conn("nodeA", 1, "u1", ("lobby",)), UNLIMITED)
    await store.aconnect(conn("nodeB", 1, "u2", ("lobby",)), UNLIMITED)
    old = setup.primary()
    with setup.sentinels[0].client() as sentinel:
        sentinel.sentinel_failover(SERVICE)
    new = await asyncio.to_thread(setup.wait_for_promotion, old)

    def demoted() -> None:
        with old.client() as c:
            while c.info("replication")["role"] != "slave":
                time.sleep(0.05)

    await asyncio.wait_for(asyncio.to_thread(demoted), 30)
    # Both clients' pooled connections were to the old primary.
    assert store.connect(conn("nodeA", 2, "u3", ("lobby",)), UNLIMITED).accepted
    assert (await store.aconnect(conn("nodeB", 2, "u4", ("lobby",)), UNLIMITED)).accepted
    with new.client() as c:
        assert c.get(store.group_count_key("lobby")) == "4"
    assert await store.agroup_size("lobby") == 4
    await store.aclose()


@pytest.fixture
def sentinel_presence(
    fresh_sentinel_setup: SentinelSetup, key_prefix: str
) -> Iterator[SentinelSetup]:
    """The presence cache on a Sentinel set-up of the test's own (listed before ``ws``)."""
    with override_settings(
        CACHES={"default": fresh_sentinel_setup.cache_config()},
        CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix, "TTL": TTL, "HEARTBEAT": HEARTBEAT},
    ):
        yield fresh_sentinel_setup


async def _exact_after(
    observer: RedisStore, want: dict[str, set[str]], bound: float, since: float
) -> float:
    """Seconds from ``since`` until every group in ``want`` holds exactly those users
    (one connection each), read through the sentinels as any process would;
    fails once ``bound`` seconds have passed since ``since``."""
    last: Any = None
    while time.monotonic() - since < bound:
        try:
            sizes = await observer.agroup_sizes(tuple(want))
            users = {g: set(await observer.agroup_users(g)) for g in want}
            last = (sizes, users)
            if all(sizes[g] == len(u) and users[g] == u for g, u in want.items()):
                return time.monotonic() - since
        except StoreUnavailable as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"counts not exact within {bound}s; last read: {last}")


async def test_failover_leaves_counts_exact_and_every_socket_open(
    sentinel_presence: SentinelSetup, ws: Any, key_prefix: str, caplog: Any
) -> None:
    """The primary SIGKILLed while the replica lacks the last writes: counts are
    exact again within AFTER_PROMOTION_BOUND seconds of the promotion, and
    presence closes no socket."""
    setup = sentinel_presence
    caplog.set_level(logging.INFO, logger="channels_presence")
    socks = {i: await ws("/ws/lobby/", user=i, session=f"s{i}") for i in range(1, 9)}
    await asyncio.to_thread(setup.wait_replicated)

    # From here the replica gets nothing: the failover will lose these writes.
    await asyncio.to_thread(setup.cut_off_replicas)
    for i in (9, 10):
        socks[i] = await ws("/ws/lobby/", user=i, session=f"s{i}")
    await socks[1].send_json_to({"join": "room"})
    assert await socks[1].receive_json_from(timeout=3) == {"joined": "room"}
    await socks.pop(2).disconnect()

    killed = time.monotonic()
    old = await asyncio.to_thread(setup.kill_primary)
    await asyncio.to_thread(setup.resume_replicas)
    with setup.replicas()[0].client() as c:
        # What the replica about to be promoted holds: users 1 to 8, no room.
        assert c.get(f"{key_prefix}/g{{lobby}}/n") == "8"
        assert c.get(f"{key_prefix}/g{{room}}/n") is None
    # A connection that comes during the outage is let in (ON_STORE_ERROR="allow").
    socks[11] = await ws("/ws/lobby/", user=11, session="s11")
    await asyncio.to_thread(setup.wait_for_promotion, old, PROMOTION_BOUND)
    promoted = time.monotonic()

    observer = RedisStore(setup.location(), sentinels=setup.sentinel_addresses, prefix=key_prefix)
    want = {"lobby": {str(i) for i in socks}, "room": {"1"}}
    took = await _exact_after(observer, want, AFTER_PROMOTION_BOUND, promoted)
    print(
        f"promotion {promoted - killed:.2f} s after the kill; "
        f"counts exact {took:.2f} s after the promotion"
    )
    # The promoted replica lacked writes, and the heartbeat wrote them back.
    assert any("wrote back" in r.getMessage() for r in caplog.records)

    # Still exact a little later (the write-back is done), and every socket
    # open: nothing was sent to any of them.
    await asyncio.sleep(2)
    assert await _exact_after(observer, want, 1.0, time.monotonic()) < 1.0
    for sock in socks.values():
        assert await sock.receive_nothing(timeout=0.05)
    await observer.aclose()


async def test_a_lost_join_alone_is_written_back(
    sentinel_presence: SentinelSetup, ws: Any, key_prefix: str
) -> None:
    """A join is one of the node's own writes: lost in a failover, it is noticed
    by the node's next beat, though the node made no store call meanwhile."""
    setup = sentinel_presence
    sock = await ws("/ws/lobby/", user=1, session="s1")
    await asyncio.to_thread(setup.wait_replicated)
    await asyncio.to_thread(setup.cut_off_replicas)
    await sock.send_json_to({"join": "room"})
    assert await sock.receive_json_from(timeout=3) == {"joined": "room"}
    old = await asyncio.to_thread(setup.kill_primary)
    await asyncio.to_thread(setup.resume_replicas)
    with setup.replicas()[0].client() as c:
        # Not promoted yet (nothing can write to it): it never saw the join.
        assert c.get(f"{key_prefix}/g{{room}}/n") is None
    await asyncio.to_thread(setup.wait_for_promotion, old, PROMOTION_BOUND)
    promoted = time.monotonic()
    observer = RedisStore(setup.location(), sentinels=setup.sentinel_addresses, prefix=key_prefix)
    want = {"lobby": {"1"}, "room": {"1"}}
    took = await _exact_after(observer, want, QUIET_AFTER_PROMOTION_BOUND, promoted)
    print(f"quiet node: counts exact {took:.2f} s after the promotion")
    assert await sock.receive_nothing(timeout=0.05)
    await observer.aclose()


def test_redis_sentinel_processes_really_run(sentinel_setup: SentinelSetup) -> None:
    """The fixture is what it says: three sentinels agreeing on one primary and its replica."""
    for sentinel in sentinel_setup.sentinels:
        with sentinel.client() as c:
            state = c.sentinel_master(SERVICE)
            assert state["num-other-sentinels"] == 2
            assert state["num-slaves"] == 1
            assert int(state["port"]) == sentinel_setup.primary().port
    with pytest.raises(redis.ResponseError), sentinel_setup.sentinels[0].client() as c:
        c.set("x", 1)  # a sentinel is no data server


def test_the_function_library_reaches_the_replica(
    sentinel_setup: SentinelSetup, sentinel_store: RedisStore
) -> None:
    """A promoted replica can run the functions at once: FUNCTION LOAD replicates."""
    sentinel_store.refresh("nodeA")
    sentinel_setup.wait_replicated()
    with sentinel_setup.replicas()[0].client() as replica:
        assert LIBRARY in str(replica.function_list())


async def test_the_channel_layer_settings_of_the_readme_work_on_sentinel(
    sentinel_setup: SentinelSetup, key_prefix: str
) -> None:
    """channels_redis takes a Sentinel host as the README shows it."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(
        hosts=[
            {
                "sentinels": sentinel_setup.sentinel_addresses,
                "master_name": SERVICE,
                "db": 1,
                "socket_timeout": 15,
                "max_connections": 1000,
            }
        ],
        prefix=f"{key_prefix}-layer",
    )
    try:
        channel = await layer.new_channel()
        await layer.group_add("lobby", channel)
        await layer.group_send("lobby", {"type": "hello"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "hello"}
        with sentinel_setup.primary().client() as primary:
            primary.select(1)
            assert primary.keys(f"{key_prefix}-layer*")
    finally:
        # channels_redis closes its pools but not the Sentinel's own clients.
        managers = [
            client.connection_pool.sentinel_manager
            for loop_layer in layer._layers.values()
            for client in loop_layer._connections.values()
        ]
        await layer.flush()
        for manager in managers:
            await manager.aclose()
