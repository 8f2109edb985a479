"""RedisStore on a real Redis: what only a shared, multi-process store must get right.

Expiry read by the server clock, racing sweepers and connects, recovery after
Redis loses its data, keys that all expire, one round trip per operation,
errors that name the server, and reuse of Django cache settings.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from django.test import override_settings
from redis.crc import key_slot

from channels_presence.conf import build_settings
from channels_presence.exceptions import StoreUnavailable
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, Departure, SessionPolicy
from channels_presence.stores.redis import RedisStore
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

UNLIMITED = SessionPolicy(max_sessions=None)
ONE = SessionPolicy(max_sessions=1)


def conn(
    channel: str,
    user: str | None = "u1",
    session: str | None = None,
    groups: tuple[str, ...] = (),
) -> Connection:
    return Connection(channel, user, session, groups=groups)


@pytest.fixture
def make_store(redis_url: str, key_prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """RedisStores on the test Redis and prefix, closed afterwards."""
    made: list[RedisStore] = []

    def make(**kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", key_prefix)
        store = RedisStore(redis_url, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at what the store wrote."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as c:
        yield c


def keys_of(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{prefix}:*", count=1000))


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def other_calls(client: redis.Redis) -> dict[str, int]:
    """Calls of the top-level commands a non-scripted store would send."""
    stats = client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("eval", "script|load", "multi", "exec", "ping")
    }


# Expiry ------------------------------------------------------------------------


def test_expired_entries_are_not_counted_before_any_sweep(
    make_store: Callable[..., RedisStore], client: redis.Redis, key_prefix: str
) -> None:
    store = make_store(ttl=1)
    store.connect(conn("c1", "u1", groups=("room",)), UNLIMITED)
    store.connect(conn("c2", "u2", groups=("room", "lobby")), UNLIMITED)
    store.connect(conn("a1", None, groups=("room",)), UNLIMITED)
    assert store.group_sizes(("room", "lobby")) == {"room": 3, "lobby": 1}

    time.sleep(1.1)

    # Still recorded (nothing swept them), but no read counts them.
    assert client.hlen(f"{key_prefix}:conn") == 3
    assert store.group_size("room") == 0
    assert store.group_user_count("room") == 0
    assert store.group_sizes(("room", "lobby")) == {"room": 0, "lobby": 0}
    assert store.groups() == {}
    assert store.group_members("room") == ()
    assert store.user_connections("u1") == ()
    assert len(store.sweep()) == 3
    assert client.hlen(f"{key_prefix}:conn") == 0


def test_a_user_stays_counted_while_one_connection_lives(
    make_store: Callable[..., RedisStore],
) -> None:
    store = make_store(ttl=1)
    store.connect(conn("old", "u1", groups=("room",)), UNLIMITED)
    time.sleep(0.6)
    store.connect(conn("new", "u1", groups=("room",)), UNLIMITED)
    time.sleep(0.6)

    assert (store.group_size("room"), store.group_user_count("room")) == (1, 1)
    [swept] = store.sweep()
    # The user still has "new" in the room: no leave, not offline.
    assert (swept.connection.channel_name, swept.user_left, swept.went_offline) == (
        "old",
        (),
        False,
    )
    assert (store.group_size("room"), store.group_user_count("room")) == (1, 1)


async def test_racing_sweepers_report_each_departure_once(
    make_store: Callable[..., RedisStore],
) -> None:
    writer = make_store(ttl=1)
    expected_left: set[tuple[str, str]] = set()
    for i in range(200):
        user = f"u{i % 40}"
        groups = (f"g{i % 5}", f"g{(i + 1) % 5}")
        await writer.aconnect(conn(f"c{i}", user, groups=groups), UNLIMITED)
        expected_left.update((user, g) for g in groups)
    await asyncio.sleep(1.1)
    # Small batches force the sweepers to interleave many times.
    sweepers = [make_store(ttl=1, sweep_batch=7) for _ in range(4)]

    async def heartbeat_until_done(store: RedisStore) -> list[Departure]:
        found: list[Departure] = []
        while batch := (await store.arefresh(())).expired:
            found.extend(batch)
        return found

    async def sweep(store: RedisStore) -> list[Departure]:
        return list(await store.asweep())

    results = await asyncio.gather(
        *(heartbeat_until_done(s) for s in sweepers[:2]), *(sweep(s) for s in sweepers[2:])
    )
    # Threads too: separate connections, truly concurrent clients.
    with ThreadPoolExecutor(2) as pool:
        results.extend(pool.map(lambda s: list(s.sweep()), sweepers))

    departures = [d for found in results for d in found]
    names = [d.connection.channel_name for d in departures]
    assert sorted(names) == sorted(f"c{i}" for i in range(200))
    left = Counter((d.connection.user, g) for d in departures for g in d.user_left)
    assert set(left) == expected_left
    assert set(left.values()) == {1}
    offline = Counter(d.connection.user for d in departures if d.went_offline)
    assert offline == Counter({f"u{i}": 1 for i in range(40)})
    for store in sweepers:
        await store.aclose()


def test_swept_connection_is_closed_not_restored_by_its_late_heartbeat(
    make_store: Callable[..., RedisStore],
) -> None:
    stalled = make_store(ttl=1)
    other = make_store(ttl=1)
    mine = conn("c1", "u1", groups=("room",))
    stalled.connect(mine, UNLIMITED)
    time.sleep(1.1)
    # Another process swept it and discarded it from the layer's groups...
    assert [d.connection.channel_name for d in other.refresh(()).expired] == ["c1"]

    # ...so when the stalled process wakes up, the connection must close.
    result = stalled.refresh((mine,))

    assert (result.closed, result.restored) == (("c1",), 0)
    assert stalled.group_size("room") == 0


# Recovery --------------------------------------------------------------------------


def _populate(store: RedisStore) -> tuple[Connection, ...]:
    local = (
        conn("c1", "u1", "s1", groups=("room", "lobby")),
        conn("c2", "u1", "s2", groups=("room",)),
        conn("c3", "u2", groups=("room",)),
        conn("a1", None, groups=("lobby",)),
    )
    for c in local:
        store.connect(c, UNLIMITED)
    return local


def _snapshot(store: RedisStore) -> tuple[Any, ...]:
    return (
        store.group_sizes(("room", "lobby")),
        store.group_user_count("room"),
        store.group_user_count("lobby"),
        store.groups(),
        [c.channel_name for c in store.user_connections("u1")],
    )


def test_flushall_then_one_heartbeat_restores_counts(
    make_store: Callable[..., RedisStore],
    client: redis.Redis,
    redis_server: RedisServer | None,
) -> None:
    if redis_server is None:
        pytest.skip("FLUSHALL needs the throwaway redis-server, not REDIS_URL")
    store = make_store()
    local = _populate(store)
    before = _snapshot(store)
    assert before[0] == {"room": 3, "lobby": 2}

    client.flushall()
    assert store.group_sizes(("room", "lobby")) == {"room": 0, "lobby": 0}
    result = store.refresh(local)

    assert (result.restored, result.closed, result.expired) == (4, (), ())
    assert _snapshot(store) == before


async def test_restart_then_one_heartbeat_restores_counts(
    make_store: Callable[..., RedisStore], redis_server: RedisServer | None
) -> None:
    if redis_server is None:
        pytest.skip("restarting needs the throwaway redis-server, not REDIS_URL")
    store = make_store()
    local = _populate(store)
    before = _snapshot(store)
    await store.agroup_size("room")  # the async client holds a pooled socket too

    # Keys, loaded scripts and every pooled socket are gone.
    redis_server.restart()

    assert (await store.arefresh(local)).restored == 4
    assert _snapshot(store) == before
    await store.aclose()


# Keys ----------------------------------------------------------------------------


def _exercise(store: RedisStore) -> None:
    """Every kind of key the store writes, tombstones included."""
    _populate(store)
    store.connect(conn("c4", "u1", "s3", groups=("room",)), SessionPolicy(max_sessions=2))
    store.join("c3", ("extra",))
    store.leave("c3", ("room",))
    store.set_meta("c3", {"typing": True})
    store.disconnect("a1")
    store.connect(conn("d1", "u9", groups=("gone-soon",)), UNLIMITED)
    store.disconnect_user("u9")
    store.refresh((conn("r1", "u7", groups=("restored",)),))


def test_every_key_expires(
    make_store: Callable[..., RedisStore], client: redis.Redis, key_prefix: str
) -> None:
    store = make_store(ttl=30)
    _exercise(store)

    keys = keys_of(client, key_prefix)
    kinds = {re.sub(r":(group|gone):.*?(:users)?$", r":\1\2", k) for k in keys}
    assert kinds >= {
        f"{key_prefix}:{kind}"
        for kind in ("conn", "alive", "groups", "users", "group", "group:users", "gone")
    }
    no_expiry = [k for k in keys if client.ttl(k) < 0]
    assert no_expiry == []
    assert max(client.ttl(k) for k in keys) <= 30 * 10


def test_a_hash_tag_prefix_puts_every_key_in_one_cluster_slot(
    make_store: Callable[..., RedisStore], client: redis.Redis, key_prefix: str
) -> None:
    prefix = "{" + key_prefix + "}"
    _exercise(make_store(prefix=prefix))

    keys = [k for k in client.scan_iter(match=f"{{{key_prefix}}}:*", count=1000)]
    assert len(keys) > 10
    assert {key_slot(k.encode()) for k in keys} == {key_slot(prefix.encode())}


def test_reject_new_leaves_every_key_untouched(
    make_store: Callable[..., RedisStore], redis_url: str, key_prefix: str
) -> None:
    store = make_store()
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")
    store.connect(conn("c1", "u1", "s1", groups=("room",)), policy)
    with redis.Redis.from_url(redis_url) as raw:
        before = {k: raw.dump(k) for k in raw.scan_iter(match=f"{key_prefix}:*")}

        assert store.connect(conn("c2", "u1", "s2", groups=("new",)), policy).accepted is False

        after = {k: raw.dump(k) for k in raw.scan_iter(match=f"{key_prefix}:*")}
    assert after == before


# Atomicity -------------------------------------------------------------------------


def test_racing_connects_of_one_user_leave_exactly_one(
    make_store: Callable[..., RedisStore],
) -> None:
    stores = [make_store() for _ in range(5)]
    start = threading.Barrier(20)

    def connect(i: int) -> Any:
        start.wait()
        return stores[i % 5].connect(conn(f"c{i:02}", "u1", groups=("room",)), ONE)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(connect, range(20)))

    assert all(r.accepted for r in results)
    survivors = stores[0].user_connections("u1")
    assert len(survivors) == 1
    evicted = [d.connection.channel_name for r in results for d in r.evicted]
    assert len(evicted) == len(set(evicted)) == 19
    assert survivors[0].channel_name not in evicted
    assert sum(r.came_online for r in results) == 1
    assert (stores[0].group_size("room"), stores[0].group_user_count("room")) == (1, 1)
    everyone = tuple(conn(f"c{i:02}", "u1", groups=("room",)) for i in range(20))
    assert len(stores[1].refresh(everyone).closed) == 19


async def test_racing_connects_with_reject_new_accept_exactly_one(
    make_store: Callable[..., RedisStore],
) -> None:
    stores = [make_store() for _ in range(5)]
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")

    results = await asyncio.gather(
        *(stores[i % 5].aconnect(conn(f"c{i:02}", "u1"), policy) for i in range(20))
    )

    assert sum(r.accepted for r in results) == 1
    assert len(await stores[0].auser_connections("u1")) == 1
    for store in stores:
        await store.aclose()


# Round trips -----------------------------------------------------------------------


def test_each_operation_is_one_round_trip(
    make_store: Callable[..., RedisStore], client: redis.Redis
) -> None:
    store = make_store()
    local = tuple(conn(f"c{i}", f"u{i % 7}", groups=("a", "b")) for i in range(50))
    # The first use of each script on a server loads it: not what we measure.
    store.connect(conn("warm", "w"), ONE)
    store.refresh(())
    store.disconnect("warm")
    store.group_sizes(("a",))

    def cost(operation: Callable[[], Any]) -> tuple[int, dict[str, int]]:
        calls, others = evalsha_calls(client), other_calls(client)
        operation()
        after = other_calls(client)
        return evalsha_calls(client) - calls, {k: after[k] - others[k] for k in after}

    nothing_else = dict.fromkeys(other_calls(client), 0)
    for c in local:
        assert cost(lambda c=c: store.connect(c, ONE)) == (1, nothing_else)
    assert cost(lambda: store.refresh(local)) == (1, nothing_else)
    assert cost(lambda: store.join("c1", ("x",))) == (1, nothing_else)
    assert cost(lambda: store.leave("c1", ("x",))) == (1, nothing_else)
    assert cost(lambda: store.set_meta("c1", {})) == (1, nothing_else)
    assert cost(lambda: store.disconnect("c1")) == (1, nothing_else)
    assert cost(lambda: store.disconnect_user("u2")) == (1, nothing_else)
    assert cost(lambda: store.group_sizes(("a", "b", "c", "d"))) == (1, nothing_else)
    assert cost(lambda: store.group_user_count("a")) == (1, nothing_else)


# Errors ----------------------------------------------------------------------------


async def test_unreachable_redis_raises_store_unavailable_naming_it() -> None:
    port = free_port()
    store = RedisStore(f"redis://user:s3cret@127.0.0.1:{port}/0", prefix="p")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as sync_error:
        store.connect(conn("c1"), ONE)
    with pytest.raises(StoreUnavailable) as async_error:
        await store.agroup_size("room")
    assert time.monotonic() - started < 5

    for error in (sync_error, async_error):
        message = str(error.value)
        assert f"127.0.0.1:{port}" in message
        assert "s3cret" not in message
        assert isinstance(error.value.__cause__, redis.RedisError)
    assert "s3cret" not in repr(store)
    await store.aclose()


# Django cache settings -------------------------------------------------------------


@pytest.fixture
def acl_user(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A Redis user with a password, removed afterwards."""
    client.acl_setuser(
        "presence-test", enabled=True, passwords=["+pw-9f2"], keys=["*"], commands=["+@all"]
    )
    yield "presence-test", "pw-9f2"
    client.acl_deluser("presence-test")


def _host_port(redis_url: str) -> str:
    return redis_url.split("//", 1)[1].split("/", 1)[0]


def test_from_cache_config_understands_django_redis(
    redis_url: str, key_prefix: str, acl_user: tuple[str, str], client: redis.Redis
) -> None:
    username, password = acl_user
    host = _host_port(redis_url)
    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": [f"redis://{host}", "redis://replica.invalid:6379/0"],
        "OPTIONS": {
            "USERNAME": username,
            "PASSWORD": password,
            "DB": 2,
            "SOCKET_CONNECT_TIMEOUT": 1,
            "CONNECTION_POOL_KWARGS": {"max_connections": 8},
        },
    }
    settings = build_settings({"KEY_PREFIX": key_prefix, "TTL": 30})

    store = RedisStore.from_cache_config(config, settings)
    try:
        assert (store.url, store.prefix, store.ttl) == (f"redis://{host}", key_prefix, 30.0)
        store.connect(conn("c1", groups=("room",)), ONE)
        assert store.group_size("room") == 1
        # DB from OPTIONS wins over the URL's, as in django-redis.
        with redis.Redis.from_url(f"redis://{host}/2") as db2:
            assert db2.exists(f"{key_prefix}:conn") == 1
        assert client.exists(f"{key_prefix}:conn") == 0
    finally:
        store.close()

    config["OPTIONS"] = {"USERNAME": username, "PASSWORD": "wrong-pw"}
    wrong = RedisStore.from_cache_config(config, settings)
    with pytest.raises(StoreUnavailable) as error:
        wrong.group_size("room")
    assert "wrong-pw" not in str(error.value)
    wrong.close()


def test_from_cache_config_understands_djangos_redis_cache(
    redis_url: str, key_prefix: str, acl_user: tuple[str, str]
) -> None:
    username, password = acl_user
    host = _host_port(redis_url)
    config = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        # Comma-separated, as Django accepts: the first server is the writer.
        "LOCATION": f"redis://{username}:{password}@{host},redis://replica.invalid:6379",
        "OPTIONS": {"db": 3, "parser_class": "redis.connection._RESP2Parser"},
    }
    settings = build_settings({"KEY_PREFIX": key_prefix})

    store = RedisStore.from_cache_config(config, settings)
    try:
        assert password not in repr(store)
        store.connect(conn("c1", groups=("room",)), ONE)
        with redis.Redis.from_url(f"redis://{host}/3") as db3:
            assert db3.exists(f"{key_prefix}:conn") == 1
    finally:
        store.close()


def test_get_store_picks_the_redis_store_for_a_redis_cache(redis_url: str, key_prefix: str) -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "presence": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url},
    }
    with override_settings(
        CACHES=caches, CHANNELS_PRESENCE={"CACHE": "presence", "KEY_PREFIX": key_prefix}
    ):
        store = get_store()
        assert isinstance(store, RedisStore)
        assert store.prefix == key_prefix
        store.connect(conn("c1", groups=("room",)), ONE)
        assert store.group_size("room") == 1
        store.close()


# Event loops -----------------------------------------------------------------------


def test_each_event_loop_gets_its_own_client(make_store: Callable[..., RedisStore]) -> None:
    store = make_store()
    store.connect(conn("c1", groups=("room",)), UNLIMITED)

    # Loops come and go (asyncio.run, tests, threads); each must just work.
    for _ in range(3):
        assert asyncio.run(store.agroup_size("room")) == 1

    sizes: list[int] = []
    thread = threading.Thread(target=lambda: sizes.append(asyncio.run(store.agroup_size("room"))))
    thread.start()
    thread.join()
    assert sizes == [1]
    # Clients of closed loops are let go of.
    assert asyncio.run(store.agroup_size("room")) == 1
    assert len(store._async) <= 1
