"""RedisStore on a real Redis: what only a shared, multi-process store must get right.

Node liveness read by the server clock, racing reapers and connects, recovery
after Redis loses its data, the key layout of ``presence.lua`` (every key
gone once presence is, one cluster slot per user, group and node), one round
trip per operation, work in batches, errors that name the server, and reuse
of Django cache settings.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
import redis
from django.test import override_settings
from redis.crc import key_slot

from channels_presence.conf import build_settings
from channels_presence.exceptions import StoreUnavailable
from channels_presence.stores import get_store
from channels_presence.stores.base import (
    Connection,
    ConnectResult,
    Departure,
    RefreshResult,
    SessionPolicy,
)
from channels_presence.stores.cluster import ClusterRedisStore
from channels_presence.stores.redis import LIBRARY, USER_BATCH, RedisStore
from tests.redis_server import RedisServer, free_port, wait_for_port

pytestmark = pytest.mark.redis

UNLIMITED = SessionPolicy(max_sessions=None)
ONE = SessionPolicy(max_sessions=1)
#: Slack added to TTL waits: the server clock must see the deadline pass.
SLACK = 0.2
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int) -> str:
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _DIGITS[d] + out
        if n == 0:
            return out


class Node:
    """One node (event loop) on a store, handing out conn_ids as its heartbeat would."""

    def __init__(self, store: RedisStore, node_id: str | None = None) -> None:
        self.store = store
        self.id = node_id or uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)

    def conn(
        self,
        user: str | None = "u1",
        session: str | None = None,
        groups: tuple[str, ...] = (),
        meta: dict[str, Any] | None = None,
        channel: str | None = None,
    ) -> Connection:
        """A new connection of this node, as a consumer hands it to the store."""
        seq = _b36(next(self._seq))
        return Connection(
            channel or f"specific.{self.id}!{seq}",
            user,
            session,
            groups=groups,
            meta=meta,
            conn_id=f"{self.id}.{seq}",
        )

    def connect(
        self, user: str | None = "u1", policy: SessionPolicy = UNLIMITED, **kwargs: Any
    ) -> Connection:
        """Connect a new connection, which must be accepted; returns it as recorded."""
        c = self.conn(user, **kwargs)
        result = self.store.connect(c, policy)
        assert result.accepted, result
        return replace(c, connected_at=result.connected_at)

    def refresh(self) -> RefreshResult:
        return self.store.refresh(self.id)

    async def arefresh(self) -> RefreshResult:
        return await self.store.arefresh(self.id)


@pytest.fixture
def make_store(redis_url: str, key_prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """RedisStores on the test Redis and prefix, closed afterwards."""
    made: list[RedisStore] = []

    def make(**kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", key_prefix)
        store = RedisStore(kwargs.pop("url", redis_url), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def make_node(make_store: Callable[..., RedisStore]) -> Callable[..., Node]:
    """A node on a store of its own (one process each): ``make_node(ttl=1)``."""

    def make(store: RedisStore | None = None, **kwargs: Any) -> Node:
        return Node(store or make_store(**kwargs))

    return make


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at what the store wrote."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as c:
        yield c


def keys_of(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{prefix}/*", count=1000))


def dump_all(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of the prefix with its serialized value (DUMP) and when it expires."""
    # redis-py's dump() never decodes, whatever the client's decode_responses.
    return {k: (client.dump(k), client.expiretime(k)) for k in keys_of(client, prefix)}


def channels(items: Any) -> list[str]:
    return sorted(
        (d.connection if isinstance(d, Departure) else d).channel_name for d in items or ()
    )


#: The documented key layout (presence.lua's header): kind -> (key after P, Redis type).
LAYOUT = {
    "user": (r"/u\{[^{}]+\}", "hash"),
    "group": (r"/g\{[^{}]+\}", "hash"),
    "group count": (r"/g\{[^{}]+\}/n", "string"),
    "group anonymous": (r"/g\{[^{}]+\}/a", "set"),
    "node": (r"/n\{[0-9a-f]+\}", "hash"),
    "node bucket": (r"/n\{[0-9a-f]+\}/[0-9]+", "hash"),
    "node anonymous": (r"/n\{[0-9a-f]+\}/a", "hash"),
    "node inbox": (r"/n\{[0-9a-f]+\}/x", "list"),
    "nodes": (r"/\{~\}nodes", "zset"),
    "pending": (r"/\{~\}pending", "zset"),
    "groups": (r"/\{~\}groups", "zset"),
}


def kind_of(key: str, prefix: str, client: redis.Redis) -> str:
    for kind, (pattern, type_) in LAYOUT.items():
        if re.fullmatch(re.escape(prefix) + pattern, key):
            assert client.type(key) == type_, (key, type_)
            return kind
    raise AssertionError(f"{key!r} is not in the documented key layout")


# Liveness: a dead node's connections -----------------------------------------------


def test_listings_leave_out_a_dead_nodes_connections_at_its_deadline(
    make_node: Callable[..., Node],
) -> None:
    dead, live = make_node(ttl=2), make_node(ttl=2)
    dead.connect("u1", groups=("room",))
    dead.connect("u2", groups=("room",))
    dead.connect(None, groups=("room",))
    time.sleep(1)
    kept = live.connect("u1", groups=("room",))
    assert live.refresh().expired == ()
    time.sleep(1 + SLACK)

    # Past the dead node's deadline, before anyone reaped it; the live node's
    # deadline is most of a second away.
    reader = live.store
    assert [c.conn_id for c in reader.user_connections("u1")] == [kept.conn_id]
    assert reader.user_connections("u2") == ()
    [member] = reader.group_members("room")
    assert (member.user, [c.conn_id for c in member.connections]) == ("u1", [kept.conn_id])
    # Counts are plain GET/HLEN: they still include the dead node until it is reaped.
    assert (reader.group_size("room"), reader.group_user_count("room")) == (4, 2)


def test_counts_drop_once_another_nodes_heartbeat_reaps_a_dead_node(
    make_node: Callable[..., Node],
) -> None:
    dead, live = make_node(ttl=1), make_node(ttl=1)
    gone = [
        dead.connect("u1", groups=("room",)),
        dead.connect("u2", groups=("room", "lobby")),
        dead.connect(None, groups=("room",)),
    ]
    live.connect("u1", groups=("room",))
    time.sleep(1 + SLACK)
    assert live.store.group_sizes(("room", "lobby")) == {"room": 4, "lobby": 1}

    result = live.refresh()

    assert channels(result.expired) == channels(gone)
    by_user = {d.connection.user: d for d in result.expired}
    # u1 is still in the room on the live node: no leave, not offline.
    assert (by_user["u1"].user_left, by_user["u1"].went_offline) == ((), False)
    assert (set(by_user["u2"].user_left), by_user["u2"].went_offline) == ({"room", "lobby"}, True)
    assert by_user[None].went_offline is False
    store = live.store
    assert store.group_sizes(("room", "lobby")) == {"room": 1, "lobby": 0}
    assert (store.group_user_count("room"), store.groups()) == (1, {"room": 1})
    assert live.refresh().expired == ()


def test_sweep_reaps_dead_nodes_without_a_heartbeat(
    make_node: Callable[..., Node], make_store: Callable[..., RedisStore]
) -> None:
    dead = make_node(ttl=1)
    gone = [dead.connect(f"u{i}", groups=("room",)) for i in range(5)]
    time.sleep(1 + SLACK)

    # A store with no node of its own (a management command) sweeps in batches.
    sweeper = make_store(ttl=1, reap_budget=3)
    assert channels(sweeper.sweep()) == channels(gone)
    assert (sweeper.group_size("room"), sweeper.groups(), sweeper.sweep()) == (0, {}, ())


def test_refresh_says_when_another_nodes_deadline_passes(make_node: Callable[..., Node]) -> None:
    alone = make_node(ttl=30)
    assert alone.refresh().next_check is None
    other = make_node(ttl=30)
    other.refresh()

    next_check = alone.refresh().next_check

    assert next_check is not None
    assert 0 < next_check <= 30


async def test_racing_reapers_report_each_departure_once(
    make_node: Callable[..., Node],
) -> None:
    dead = make_node(ttl=1)
    expected_left: set[tuple[str, str]] = set()
    for i in range(200):
        user = f"u{i % 40}"
        groups = (f"g{i % 5}", f"g{(i + 1) % 5}")
        dead.connect(user, groups=groups)
        expected_left.update((user, g) for g in groups)
    anonymous = [dead.connect(None, groups=("g0",)) for _ in range(10)]
    await asyncio.sleep(1 + SLACK)
    # Live nodes of their own, small budgets: the reapers interleave many times.
    reapers = [make_node(ttl=5, reap_budget=7) for _ in range(5)]

    async def heartbeat_until_done(node: Node) -> list[Departure]:
        found: list[Departure] = []
        while True:
            result = await node.arefresh()
            found.extend(result.expired)
            if not result.more:
                return found

    def sync_heartbeat_until_done(node: Node) -> list[Departure]:
        return asyncio.run(heartbeat_until_done(node))

    def sync_sweep(node: Node) -> list[Departure]:
        return list(node.store.sweep())

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(2) as pool:
        # Threads too: separate clients, truly concurrent with this loop's.
        results = await asyncio.gather(
            *(heartbeat_until_done(r) for r in reapers[:3]),
            loop.run_in_executor(pool, sync_heartbeat_until_done, reapers[3]),
            loop.run_in_executor(pool, sync_sweep, reapers[4]),
        )

    departures = [d for found in results for d in found]
    names = [d.connection.channel_name for d in departures]
    assert sorted(names) == sorted(
        [f"specific.{dead.id}!{_b36(i)}" for i in range(1, 201)] + channels(anonymous)
    )
    left = Counter((d.connection.user, g) for d in departures for g in d.user_left)
    assert set(left) == expected_left
    assert set(left.values()) == {1}
    offline = Counter(d.connection.user for d in departures if d.went_offline)
    assert offline == Counter({f"u{i}": 1 for i in range(40)})
    assert reapers[0].store.groups() == {}
    for node in reapers:
        await node.store.aclose()


def _served(node: Node, buckets: int) -> None:
    """Move ``node``'s sequence on by ``buckets`` buckets (128 connections
    each), as if it had served that many connections, long gone."""
    node._seq = itertools.count(next(node._seq) + 128 * buckets)


def _fcalls(client: redis.Redis) -> int:
    calls: int = client.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)
    return calls


def test_retiring_a_node_that_served_millions_looks_through_its_buckets_a_share_a_call(
    make_node: Callable[..., Node], client: redis.Redis, key_prefix: str
) -> None:
    node = make_node()
    first = node.connect("u1")
    _served(node, 5000)
    last = node.connect("u2")
    for c in (first, last):
        node.store.disconnect(c)
    store = node.store

    # One call looks through 1,024 of the 5,002 buckets and says to go on.
    assert store._run(store._retire_op(node.id)) == 2
    assert client.hget(f"{key_prefix}/n{{{node.id}}}", "r") == "1024"
    before = _fcalls(client)
    assert store.retire(node.id) is True
    assert _fcalls(client) - before == 4
    assert keys_of(client, key_prefix) == []


def test_a_node_that_retired_and_connects_again_is_not_taken_for_lost(
    make_node: Callable[..., Node],
) -> None:
    """A process's loop went idle and retired its node; a new socket on the
    same loop must not make the next beat write every connection back."""
    node = make_node()
    node.store.disconnect(node.connect("u1"))
    assert node.store.retire(node.id) is True

    node.connect("u2")

    assert node.refresh().lost is False


def test_a_retire_that_meets_a_connection_far_out_keeps_the_node(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    _served(node, 3000)
    node.connect("u1")
    assert node.store.retire(node.id) is False


def test_a_dead_node_that_served_millions_is_reaped_in_bounded_calls(
    make_node: Callable[..., Node], make_store: Callable[..., RedisStore], client: redis.Redis
) -> None:
    dead = make_node(ttl=1)
    dead.store.disconnect(dead.connect("u1"))
    _served(dead, 5000)
    far = dead.connect("u2", groups=("room",))
    time.sleep(1 + SLACK)

    sweeper = make_store(ttl=1)
    before = _fcalls(client)
    assert channels(sweeper.sweep()) == channels([far])
    # Looking through an empty bucket is work too: 300 a call.
    assert _fcalls(client) - before >= 5000 // 300
    assert (sweeper.group_size("room"), sweeper.groups()) == (0, {})


def test_a_connection_written_back_behind_a_retire_walk_is_still_reaped(
    make_node: Callable[..., Node], make_store: Callable[..., RedisStore]
) -> None:
    """A retire that met a connection far out left its cursor there; a
    connection written back into an earlier bucket moves the cursor back, so
    a reaper does not pass it by."""
    node = make_node(ttl=1)
    early = node.conn("u1", groups=("room",))
    _served(node, 3000)
    far = node.connect("u2", groups=("room",))
    assert node.store.retire(node.id) is False
    assert node.store.restore((early,), UNLIMITED).restored == 1
    time.sleep(1 + SLACK)

    assert channels(make_store(ttl=1).sweep()) == channels([early, far])
    assert node.store.group_size("room") == 0


def test_a_stalled_node_is_counted_out_and_may_not_connect(
    make_node: Callable[..., Node],
) -> None:
    stalled, other = make_node(ttl=1), make_node(ttl=1)
    mine = stalled.connect("u1", groups=("room",))
    time.sleep(1 + SLACK)
    # Another node reaped it and discarded it from the layer's groups...
    assert channels(other.refresh().expired) == [mine.channel_name]

    # ...so when the stalled loop wakes up, it must close its sockets and start afresh.
    assert stalled.refresh() == RefreshResult(counted_out=True)
    assert stalled.store.connect(stalled.conn("u1", groups=("room",)), UNLIMITED) == (
        ConnectResult(accepted=False, refused="counted_out")
    )
    assert stalled.store.disconnect(mine) is None
    assert (other.store.group_size("room"), other.store.user_connections("u1")) == (0, ())
    # Its counting out is never undone by its own late calls.
    assert stalled.refresh().counted_out is True


def test_a_stalled_node_still_beating_before_it_is_reaped_keeps_its_connections(
    make_node: Callable[..., Node],
) -> None:
    slow = make_node(ttl=1)
    mine = slow.connect("u1", groups=("room",))
    time.sleep(1 + SLACK)

    # Nobody reaped it yet: its late beat is just a beat.
    assert slow.refresh().counted_out is False
    assert [c.conn_id for c in slow.store.user_connections("u1")] == [mine.conn_id]
    assert make_node(ttl=1).refresh().expired == ()


def test_a_dead_node_is_reaped_even_after_its_record_expired(
    make_node: Callable[..., Node], make_store: Callable[..., RedisStore]
) -> None:
    # ttl=0.1: node records expire after ceil(0.1 * 10) = 1 s. With TTL=60 this is a
    # single server that crashed and came back after more than ten minutes.
    dead = make_node(ttl=0.1)
    gone = dead.connect("u1", groups=("room",))
    time.sleep(1 + SLACK)

    sweeper = make_store(ttl=0.1)
    assert sweeper.user_connections("u1") == ()
    assert channels(sweeper.sweep()) == [gone.channel_name]
    assert (sweeper.group_size("room"), sweeper.group_user_count("room")) == (0, 0)


def test_a_node_stalled_longer_than_its_tombstone_lives_is_still_counted_out(
    make_node: Callable[..., Node],
) -> None:
    # ttl=0.1: records and tombstones expire after ceil(0.1 * 10) = 1 s.
    stalled, other = make_node(ttl=0.1), make_node(ttl=0.1)
    mine = stalled.connect("u1", groups=("room",))
    time.sleep(0.1 + SLACK)
    assert channels(other.refresh().expired) == [mine.channel_name]
    time.sleep(1 + SLACK)

    result = stalled.refresh()

    assert (result.counted_out, result.lost) == (True, False)


# Recovery after Redis lost its data ------------------------------------------------


def _populate(node: Node) -> tuple[Connection, ...]:
    return (
        node.connect("u1", session="s1", groups=("room", "lobby"), meta={"typing": True}),
        node.connect("u1", session="s2", groups=("room",)),
        node.connect("u2", groups=("room",)),
        node.connect(None, groups=("lobby",)),
    )


def _snapshot(store: RedisStore) -> tuple[Any, ...]:
    return (
        store.group_sizes(("room", "lobby")),
        store.group_user_count("room"),
        store.group_user_count("lobby"),
        store.groups(),
        store.user_connections("u1"),
        store.group_members("lobby"),
    )


@pytest.fixture
def flushable(redis_server: RedisServer | None) -> None:
    if redis_server is None:
        pytest.skip("FLUSHALL needs the throwaway redis-server, not REDIS_URL")


@pytest.mark.usefixtures("flushable")
def test_flushall_then_refresh_reports_lost_and_restore_brings_counts_back(
    make_node: Callable[..., Node], client: redis.Redis
) -> None:
    node = make_node()
    local = _populate(node)
    assert node.refresh().lost is False
    before = _snapshot(node.store)
    assert before[0] == {"room": 3, "lobby": 2}

    client.flushall()
    assert node.store.group_sizes(("room", "lobby")) == {"room": 0, "lobby": 0}
    assert node.refresh().lost is True
    result = node.store.restore(local, UNLIMITED)

    assert (result.restored, result.refused) == (4, ())
    assert _snapshot(node.store) == before
    assert node.refresh().lost is False
    # Writing back twice changes nothing.
    assert node.store.restore(local, UNLIMITED).restored == 0
    assert _snapshot(node.store) == before


@pytest.mark.usefixtures("flushable")
def test_connects_after_a_flush_do_not_hide_the_loss(
    make_node: Callable[..., Node], client: redis.Redis
) -> None:
    node = make_node()
    local = _populate(node)
    # The node's first connect marked it live: its first beat has nothing to restore.
    assert node.refresh().lost is False

    client.flushall()
    late = node.connect("u3", groups=("room",))

    assert node.refresh().lost is True
    assert node.store.restore((*local, late), UNLIMITED).restored == 4
    assert node.store.group_sizes(("room", "lobby")) == {"room": 4, "lobby": 2}


@pytest.mark.usefixtures("flushable")
def test_restore_refuses_connections_whose_place_was_taken_after_the_loss(
    make_node: Callable[..., Node], client: redis.Redis
) -> None:
    node, elsewhere = make_node(), make_node()
    mine = node.connect("u1", ONE, groups=("room",))
    client.flushall()
    newer = elsewhere.connect("u1", ONE, groups=("room",))

    assert node.refresh().lost is True
    result = node.store.restore((mine,), ONE)

    assert (result.restored, result.refused) == (0, (mine.conn_id,))
    assert [c.conn_id for c in node.store.user_connections("u1")] == [newer.conn_id]


def test_joins_leaves_and_metadata_count_among_the_nodes_own_writes(
    make_node: Callable[..., Node], client: redis.Redis, key_prefix: str
) -> None:
    """Store and node count the same writes, so only a lost one is reported: a
    failover to a replica that missed the node's last join shows as a loss."""
    node = make_node()
    c = node.connect("u1", groups=("lobby",))
    assert node.store.join(c, ("room",)) == ("room",)
    assert node.store.set_meta(c, {"device": "phone"})
    assert node.store.leave(c, ("room",)) == ("room",)
    # Writes about a connection that is not recorded change nothing, and count nothing.
    ghost = node.conn("u2")
    assert node.store.join(ghost, ("room",)) == ()
    assert not node.store.set_meta(ghost, None)
    assert node.refresh().lost is False

    assert node.store.join(c, ("room",)) == ("room",)
    # The store forgets that join's count, as a replica that missed it would.
    client.hincrby(f"{key_prefix}/n{{{node.id}}}", "w", -1)
    assert node.refresh().lost is True
    assert node.refresh().lost is False  # the beat took the node's count


def test_a_refused_first_connect_does_not_make_the_next_refresh_report_lost(
    make_node: Callable[..., Node],
) -> None:
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")
    make_node().connect("u1", policy)
    node = make_node()
    assert node.store.connect(node.conn("u1"), policy).refused == "limit"
    node.connect("u2", policy)

    assert node.refresh().lost is False


async def test_restart_then_refresh_reports_lost_and_reloads_the_functions(
    make_node: Callable[..., Node], redis_server: RedisServer | None
) -> None:
    if redis_server is None:
        pytest.skip("restarting needs the throwaway redis-server, not REDIS_URL")
    node = make_node()
    local = _populate(node)
    before = _snapshot(node.store)
    await node.store.agroup_size("room")  # the async client holds a pooled socket too

    # Keys, the function library and every pooled socket are gone.
    redis_server.restart()
    with redis.Redis.from_url(redis_server.url) as fresh:
        assert fresh.function_list() == []
    # The async client goes first: it reconnects and loads the library.
    late = node.conn("u3", groups=("room",))
    connected = await node.store.aconnect(late, UNLIMITED)
    late = replace(late, connected_at=connected.connected_at)

    assert (await node.arefresh()).lost is True
    assert (await node.store.arestore((*local, late), UNLIMITED)).restored == 4
    assert node.store.user_connections("u3") == (late,)
    node.store.disconnect(late)
    assert _snapshot(node.store) == before
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as fresh:
        [library] = fresh.function_list()
        assert dict(zip(library[::2], library[1::2], strict=True))["library_name"] == LIBRARY
    await node.store.aclose()


# Keys ----------------------------------------------------------------------------------


def _exercise(a: Node, b: Node) -> list[Connection]:
    """Every kind of key the store writes; returns the connections left."""
    by_session = SessionPolicy(max_sessions=2, scope="session")
    a.connect("u1", by_session, session="s1", groups=("lobby",), meta={"k": 1})
    a.connect("u1", by_session, session="s2", groups=("room",))
    # Takes over session s1: removed by this call, announced in a's inbox.
    left = [b.connect("u1", by_session, session="s3", groups=("room",))]
    left.append(a.connect(None, groups=("lobby",)))
    u2 = b.connect("u2", groups=("room",))
    b.store.join(u2, ("extra",))
    b.store.leave(u2, ("room",))
    b.store.set_meta(u2, {"typing": True})
    left.append(u2)
    b.connect("u9", groups=("gone",))
    b.store.disconnect_user("u9", code=4003)
    restored = b.conn("u7", groups=("restored",))
    assert b.store.restore((restored,), UNLIMITED).restored == 1
    left.append(restored)
    left.extend(c for c in a.store.user_connections("u1") if c.node == a.id)
    return left


def test_no_key_is_left_once_every_connection_left_and_the_nodes_retired(
    make_node: Callable[..., Node], client: redis.Redis, key_prefix: str
) -> None:
    a, b = make_node(grace=0.05), make_node(grace=0.05)
    left = _exercise(a, b)

    kinds = Counter(kind_of(k, key_prefix, client) for k in keys_of(client, key_prefix))
    assert set(kinds) == set(LAYOUT)
    # Nothing may expire while its node is listed (the reaper needs it all), but
    # the notices in a node's inbox.
    assert [k for k in keys_of(client, key_prefix) if client.ttl(k) > 0] == sorted(
        f"{key_prefix}/n{{{n.id}}}/x" for n in (a, b)
    )
    assert a.store.retire(a.id) is False

    for c in left:
        assert (a.store if c.node == a.id else b.store).disconnect(c) is not None
    time.sleep(0.05 + SLACK)
    assert a.store.settle() != ()
    assert a.store.retire(a.id) is True
    assert b.store.retire(b.id) is True

    assert keys_of(client, key_prefix) == []


def test_a_reaped_node_leaves_only_its_tombstone_which_expires(
    make_node: Callable[..., Node],
    make_store: Callable[..., RedisStore],
    client: redis.Redis,
    key_prefix: str,
) -> None:
    dead = make_node(ttl=1)
    _populate(dead)
    time.sleep(1 + SLACK)

    assert len(make_store(ttl=1).sweep()) == 4

    [tombstone] = keys_of(client, key_prefix)
    assert tombstone == f"{key_prefix}/n{{{dead.id}}}"
    assert "dead" in client.hgetall(tombstone)
    # It outlives any stall a process may wake from (a day), then goes.
    assert 0 < client.ttl(tombstone) <= 86400


def test_keys_of_one_user_group_or_node_share_a_slot_and_spread_over_slots(
    make_node: Callable[..., Node], client: redis.Redis, key_prefix: str
) -> None:
    nodes = [make_node(grace=30) for _ in range(4)]
    odd_user = "mail: someone+tag@example.com / {braces}"
    for i in range(60):
        node = nodes[i % 4]
        node.connect(f"u{i % 30}", groups=(f"g{i % 20}",))
        node.connect(None, groups=(f"g{i % 20}",))
    nodes[0].connect(odd_user, groups=("g0",))
    for node in nodes:
        node.store.disconnect_user("u0")  # inboxes, pending departures

    owners: dict[str, set[int]] = {}
    for key in keys_of(client, key_prefix):
        owner = re.sub(r"/[0-9a-z]+$", "", key)  # P/g{g}/n -> P/g{g}
        owners.setdefault(owner, set()).add(key_slot(key.encode()))
    assert all(len(slots) == 1 for slots in owners.values()), owners
    users = {o: s for o, s in owners.items() if "/u{" in o}
    groups = {o: s for o, s in owners.items() if "/g{" in o}
    node_keys = {o: s for o, s in owners.items() if "/n{" in o}
    # u1..u29 and the unusual one (u0 was kicked).
    assert (len(users), len(groups), len(node_keys)) == (30, 20, 4)
    # Unusual user keys get a tag of their own (a digest), never a stray brace.
    assert not any("{braces}" in o for o in users)
    for kind in (users, groups):
        assert len(set().union(*kind.values())) >= len(kind) - 2
    # The global keys share the tag "~".
    assert set().union(*(s for o, s in owners.items() if "/{~}" in o)) == {key_slot(b"~")}


def test_a_hash_tag_prefix_puts_every_key_in_one_cluster_slot(
    make_store: Callable[..., RedisStore], client: redis.Redis, key_prefix: str
) -> None:
    prefix = "{" + key_prefix + "}"
    a = Node(make_store(prefix=prefix, grace=30))
    b = Node(make_store(prefix=prefix, grace=30))
    _exercise(a, b)

    keys = keys_of(client, prefix)
    assert len(keys) > 10
    assert {key_slot(k.encode()) for k in keys} == {key_slot(prefix.encode())}


def test_reject_new_leaves_every_key_untouched(
    make_node: Callable[..., Node], client: redis.Redis, key_prefix: str
) -> None:
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")
    first = make_node()
    first.connect("u1", policy, session="s1", groups=("room",))
    before = dump_all(client, key_prefix)

    # The refused connection's node (a new one) writes nothing either.
    node = make_node()
    result = node.store.connect(node.conn("u1", session="s2", groups=("new",)), policy)

    assert (result.accepted, result.refused) == (False, "limit")
    assert dump_all(client, key_prefix) == before


def test_max_connections_refuses_the_next_and_leaves_every_key_untouched(
    make_node: Callable[..., Node], client: redis.Redis, key_prefix: str
) -> None:
    policy = SessionPolicy(max_sessions=None, max_connections=3)
    node = make_node()
    for _ in range(3):
        node.connect("u1", policy, groups=("room",))
    node.connect("u2", policy, groups=("room",))
    before = dump_all(client, key_prefix)

    result = node.store.connect(node.conn("u1", groups=("room",)), policy)

    assert (result.accepted, result.refused) == (False, "connections")
    assert dump_all(client, key_prefix) == before
    assert len(node.store.user_connections("u1")) == 3


# Atomicity -------------------------------------------------------------------------------


def test_racing_connects_of_one_user_leave_exactly_one(
    make_node: Callable[..., Node],
) -> None:
    nodes = [make_node() for _ in range(20)]
    policy = SessionPolicy(max_sessions=1, close_code=4005)
    start = threading.Barrier(20)
    made = [node.conn("u1", groups=("room",)) for node in nodes]

    def connect(i: int) -> ConnectResult:
        start.wait()
        return nodes[i].store.connect(made[i], policy)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(connect, range(20)))

    assert all(r.accepted for r in results)
    store = nodes[0].store
    [survivor] = store.user_connections("u1")
    evicted = [d.connection.conn_id for r in results for d in r.evicted]
    assert sorted(evicted) == sorted(c.conn_id for c in made if c.conn_id != survivor.conn_id)
    assert sum(r.came_online for r in results) == 1
    assert (store.group_size("room"), store.group_user_count("room")) == (1, 1)
    # Each evicted connection's node hears of it once, with the reason and code.
    notices: dict[str, tuple[str, int]] = {}
    for node in nodes:
        result = node.refresh()
        notices.update((c, (result.close_reasons[c], result.close_codes[c])) for c in result.closed)
        assert set(result.closed) <= {c.conn_id for c in made if c.node == node.id}
    assert notices == dict.fromkeys(evicted, ("superseded", 4005))


async def test_racing_connects_with_reject_new_accept_exactly_one(
    make_node: Callable[..., Node],
) -> None:
    nodes = [make_node() for _ in range(20)]
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")

    results = await asyncio.gather(
        *(node.store.aconnect(node.conn("u1", groups=("room",)), policy) for node in nodes)
    )

    assert sum(r.accepted for r in results) == 1
    assert {r.refused for r in results if not r.accepted} == {"limit"}
    assert len(await nodes[0].store.auser_connections("u1")) == 1
    assert await nodes[0].store.agroup_size("room") == 1
    for node in nodes:
        await node.store.aclose()


# Round trips and batches --------------------------------------------------------------

#: Commands a client may send, as INFO commandstats names them. Commands run
#: inside functions are counted too, so these are the ones no function runs
#: (GET aside: only the group listing, not measured here, runs it).
COUNTED = (
    "fcall",
    "fcall_ro",
    "get",
    "hlen",
    "mget",
    "function|load",
    "eval",
    "evalsha",
    "script|load",
    "multi",
    "exec",
)


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls so far of each command in COUNTED."""
    stats = client.info("commandstats")
    return Counter(
        {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in COUNTED}
    )


def test_each_operation_is_one_round_trip(
    make_node: Callable[..., Node], client: redis.Redis
) -> None:
    node, other = make_node(), make_node()
    store = node.store
    # The first call on a server loads the library, and each pool opens its
    # socket (HELLO, CLIENT SETINFO): not what we measure.
    other.connect("w")
    store.group_size("a")

    def cost(operation: Callable[[], Any]) -> Counter[str]:
        before = command_calls(client)
        operation()
        return command_calls(client) - before

    fcall = Counter(fcall=1)
    made = []
    for i in range(50):
        c = node.conn(f"u{i % 7}", session=f"s{i}", groups=("a", "b"), meta={"i": i})
        assert cost(lambda c=c: store.connect(c, ONE)) == fcall
        made.append(c)
    last = made[-1]
    assert cost(lambda: store.refresh(node.id)) == fcall
    assert cost(lambda: store.join(last, ("x",))) == fcall
    assert cost(lambda: store.leave(last, ("x",))) == fcall
    assert cost(lambda: store.set_meta(last, {"typing": True})) == fcall
    assert cost(lambda: store.disconnect(last)) == fcall
    assert cost(lambda: store.disconnect_user("w")) == fcall
    assert cost(lambda: store.user_connections("u1")) == Counter(fcall_ro=1)
    assert cost(lambda: store.group_size("a")) == Counter(get=1)
    assert cost(lambda: store.group_user_count("a")) == Counter(hlen=1)
    assert cost(lambda: store.group_sizes(("a", "b", "c", "d"))) == Counter(mget=1)
    # The async client too, and a write-back batch.
    later = node.conn("u1", groups=("a",))
    assert cost(lambda: asyncio.run(store.aconnect(later, ONE))) == fcall
    assert cost(lambda: asyncio.run(store.arefresh(node.id))) == fcall
    assert cost(lambda: store.restore(tuple(made[:20]), UNLIMITED)) == fcall


def test_a_long_join_or_leave_runs_in_calls_of_a_bounded_size(
    make_node: Callable[..., Node], client: redis.Redis
) -> None:
    node = make_node()
    conn = node.connect("u1")
    groups = tuple(f"g{i}" for i in range(250))

    before = command_calls(client)
    assert node.store.join(conn, groups) == groups
    assert (command_calls(client) - before)["fcall"] == 3  # 100 + 100 + 50
    assert node.store.group_sizes(groups[::50]) == dict.fromkeys(groups[::50], 1)

    before = command_calls(client)
    assert node.store.leave(conn, groups[:150]) == groups[:150]
    assert (command_calls(client) - before)["fcall"] == 2
    [found] = node.store.user_connections("u1")
    assert found.groups == groups[150:]


def test_disconnect_user_of_thousands_of_connections_runs_in_batches(
    make_node: Callable[..., Node], client: redis.Redis
) -> None:
    node = make_node()
    for i in range(2000):
        node.connect("u1", session=f"s{i % 3}", groups=("room", f"g{i % 4}"))
    node.connect("u2", groups=("room",))

    before = command_calls(client)
    departures = node.store.disconnect_user("u1", code=4003)
    calls = command_calls(client) - before

    assert len({d.connection.conn_id for d in departures}) == 2000
    # Two or more hash fields a connection, USER_BATCH fields scanned a call.
    assert calls["fcall"] >= 2000 * 3 // USER_BATCH // 2
    assert set(calls) == {"fcall"}
    assert sum(d.went_offline for d in departures) == 1
    assert node.store.user_connections("u1") == ()
    assert node.store.group_sizes(("room", "g0", "g3")) == {"room": 1, "g0": 0, "g3": 0}
    assert node.store.group_users("room") == ("u2",)
    # The node hears of every one, in bounded batches, with the reason and code.
    closed: list[str] = []
    while True:
        result = node.refresh()
        assert len(result.closed) <= 500
        assert set(result.close_reasons.values()) <= {"kicked"}
        assert set(result.close_codes.values()) <= {4003}
        closed.extend(result.closed)
        if not result.more:
            break
    assert sorted(closed) == sorted(d.connection.conn_id for d in departures)


def test_metadata_session_and_groups_round_trip(make_node: Callable[..., Node]) -> None:
    node = make_node()
    meta = {"typing": True, "n": [1, 2.5, None], "name": "Zoë ✓", "nested": {"a": "b"}}
    made = node.connect("u1", session="s-1", groups=("room", "lobby"), meta=meta)
    anonymous = node.connect(None, groups=("lobby",), meta={"x": 1})

    [recorded] = node.store.user_connections("u1")
    assert recorded == made
    members = {m.user: m.connections for m in node.store.group_members("lobby")}
    assert members == {"u1": (made,), None: (anonymous,)}
    node.store.set_meta(made, None)
    assert node.store.user_connections("u1")[0].meta is None
    departure = node.store.disconnect(made)
    assert departure is not None
    assert departure.connection == replace(made, meta=None)
    assert (set(departure.user_left), departure.went_offline) == ({"room", "lobby"}, True)


def test_a_channel_outside_the_nodes_prefix_round_trips(
    make_node: Callable[..., Node], make_store: Callable[..., RedisStore]
) -> None:
    node = make_node(ttl=1)
    usual = node.connect("u1", groups=("room",))
    odd = node.connect("u1", groups=("room",), channel="other.layer!abc")
    bare = node.connect("u2", groups=("room",), channel="no-bang-at-all")

    reader = make_store(ttl=1)
    assert channels(reader.user_connections("u1")) == channels([usual, odd])
    assert channels(c for m in reader.group_members("room") for c in m.connections) == (
        channels([usual, odd, bare])
    )
    time.sleep(1 + SLACK)
    # A store that never saw the node names its connections right as well.
    assert channels(reader.sweep()) == channels([usual, odd, bare])


# Errors ------------------------------------------------------------------------------


async def test_unreachable_redis_raises_store_unavailable_naming_it() -> None:
    port = free_port()
    store = RedisStore(f"redis://user:s3cret@127.0.0.1:{port}/0", prefix="p")
    node = Node(store)

    with pytest.raises(StoreUnavailable) as sync_error:
        store.connect(node.conn(), ONE)
    with pytest.raises(StoreUnavailable) as async_error:
        await store.agroup_size("room")

    for error in (sync_error, async_error):
        message = str(error.value)
        assert f"127.0.0.1:{port}" in message
        assert "s3cret" not in message
        assert isinstance(error.value.__cause__, redis.RedisError)
    assert "s3cret" not in repr(store)
    await store.aclose()


# Redis Cluster -------------------------------------------------------------------------


@pytest.fixture
def cluster_url(redis_server: RedisServer | None) -> Iterator[str]:
    """A one-node Redis Cluster owning every slot: slot rules apply, routing does not."""
    if redis_server is None:
        pytest.skip("needs the redis-server binary, not REDIS_URL")
    port = free_port()
    folder = tempfile.mkdtemp(prefix="presence-cluster-")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    # The bus port would be port + 10000, maybe past 65535.
    cluster = ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
    process = subprocess.Popen(
        [redis_server.binary, *args, "--dir", folder, *cluster],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        with redis.Redis(port=port, decode_responses=True) as c:
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while not _cluster_ok(c):
                assert time.monotonic() < deadline, "the one-node cluster never came up"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    if isinstance(info, dict):
        return bool(info.get("cluster_state") == "ok")
    return "cluster_state:ok" in str(info)


def _cluster_round(store: RedisStore) -> None:
    a, b = Node(store), Node(store)
    c = a.connect("u1", groups=("room", "lobby"))
    b.connect("u2", groups=("room",))
    store.join(c, ("extra",))
    assert store.group_sizes(("room", "lobby")) == {"room": 2, "lobby": 1}
    assert a.refresh().lost is False
    assert len(store.group_members("room")) == 2
    assert len(store.disconnect_user("u1")) == 1


def test_a_hash_tag_prefix_works_on_redis_cluster(
    cluster_url: str, make_store: Callable[..., RedisStore], key_prefix: str
) -> None:
    _cluster_round(make_store(url=cluster_url, prefix="{" + key_prefix + "}"))


def test_per_entity_hash_tags_work_on_redis_cluster(
    cluster_url: str, make_store: Callable[..., RedisStore], key_prefix: str
) -> None:
    # The cluster store: every call on one slot (the one-node cluster still
    # refuses a script that touches two).
    store = ClusterRedisStore(cluster_url, prefix=key_prefix)
    try:
        _cluster_round(store)
    finally:
        store.close()
    # The one-call store cannot, and says what to set.
    with pytest.raises(StoreUnavailable, match="REDIS_CLUSTER"):
        _cluster_round(make_store(url=cluster_url))


# Django cache settings -----------------------------------------------------------------


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
    count_key = f"{key_prefix}/g{{room}}/n"

    store = RedisStore.from_cache_config(config, settings)
    try:
        assert (store.url, store.prefix, store.ttl) == (f"redis://{host}", key_prefix, 30.0)
        Node(store).connect("u1", ONE, groups=("room",))
        assert store.group_size("room") == 1
        # DB from OPTIONS wins over the URL's, as in django-redis.
        with redis.Redis.from_url(f"redis://{host}/2") as db2:
            assert db2.get(count_key) == b"1"
            db2.delete(*db2.scan_iter(match=f"{key_prefix}/*"))
        assert client.exists(count_key) == 0
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
        Node(store).connect("u1", ONE, groups=("room",))
        with redis.Redis.from_url(f"redis://{host}/3") as db3:
            assert db3.get(f"{key_prefix}/g{{room}}/n") == b"1"
            db3.delete(*db3.scan_iter(match=f"{key_prefix}/*"))
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
        Node(store).connect("u1", ONE, groups=("room",))
        assert store.group_size("room") == 1
        store.close()


# Event loops ---------------------------------------------------------------------------


def test_each_event_loop_gets_its_own_client(make_node: Callable[..., Node]) -> None:
    node = make_node()
    store = node.store
    node.connect("u1", groups=("room",))

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


def _connected(client: redis.Redis, settles_at: int | None = None) -> int:
    """Clients connected to the test Redis (this one included).

    Redis counts a closed socket out only when its event loop reads the EOF,
    which may come after our next command. With ``settles_at``, wait (up to
    2 s) for the count to reach it, which a socket left open never lets it do;
    without, wait for two reads 50 ms apart to agree (a baseline).
    """
    deadline = time.monotonic() + 2.0
    previous = None
    while True:
        count: int = client.info("clients")["connected_clients"]
        settled = count == previous if settles_at is None else count == settles_at
        if settled or time.monotonic() > deadline:
            return count
        previous = count
        time.sleep(0.05)


def test_a_loop_that_ends_closes_its_client(
    make_store: Callable[..., RedisStore], client: redis.Redis
) -> None:
    store = make_store()
    before = _connected(client)

    for _ in range(3):
        assert asyncio.run(store.agroup_size("room")) == 0
        # Its socket was closed before the loop was: none is left to the collector.
        assert _connected(client, before) == before


def test_a_sync_twin_on_a_loop_of_its_own_leaves_no_socket_open(
    redis_url: str, key_prefix: str, client: redis.Redis
) -> None:
    from channels_presence import disconnect_user, sweep

    caches = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    with override_settings(CACHES=caches, CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix}):
        get_store().group_size("warm")  # the sync client's socket
        before = _connected(client)
        # async_to_sync runs these on a new loop each time (no loop runs here).
        assert disconnect_user(1) == 0
        assert sweep() == []
        assert _connected(client, before) == before


async def test_close_and_aclose_close_every_pooled_socket(
    make_store: Callable[..., RedisStore], client: redis.Redis
) -> None:
    before = _connected(client)
    store = make_store()
    store.group_size("room")
    await store.agroup_size("room")
    assert _connected(client, before + 2) == before + 2

    await store.aclose()
    assert _connected(client, before) == before

    store.group_size("room")
    assert _connected(client, before + 1) == before + 1
    store.close()
    assert _connected(client, before) == before
