"""The Redis store on a real Redis Cluster: three primaries made by ``redis-cli --cluster create``.

Every call must touch one slot (the cluster refuses any other), presence must
spread over the primaries, the session limit must hold under a 20-way race
of one user from twenty nodes, group counts must come out exact once the
steps of an operation are done, and a reaper that dies between steps must
leave work the next one completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.cluster
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.crc import key_slot

from channels_presence.exceptions import StoreUnavailable
from channels_presence.stores import get_store
from channels_presence.stores.base import ConnectResult, SessionPolicy
from channels_presence.stores.cluster import ClusterRedisStore, _Batch, _Enlist
from channels_presence.stores.redis import LIBRARY, RedisStore
from tests.redis_cluster import RedisCluster
from tests.redis_server import free_port
from tests.test_redis_store import LAYOUT, ONE, SLACK, UNLIMITED, Node, channels

pytestmark = pytest.mark.redis


@pytest.fixture
def make_store(
    redis_cluster: RedisCluster, key_prefix: str
) -> Iterator[Callable[..., ClusterRedisStore]]:
    """ClusterRedisStores on the test cluster and prefix, closed afterwards."""
    made: list[ClusterRedisStore] = []

    def make(**kwargs: Any) -> ClusterRedisStore:
        kwargs.setdefault("prefix", key_prefix)
        store = ClusterRedisStore(redis_cluster.url, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def make_node(make_store: Callable[..., ClusterRedisStore]) -> Callable[..., Node]:
    """A node on a cluster store of its own (one process each)."""

    def make(**kwargs: Any) -> Node:
        return Node(make_store(**kwargs))  # type: ignore[arg-type]

    return make


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    """A plain cluster client to look at what the store wrote."""
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    yield client
    client.close()


def run_step(store: ClusterRedisStore, step: Any) -> Any:
    """Run one step of an operation, as the sync driver would (to stop half-way)."""
    if isinstance(step, _Batch):
        return store._pipelined(step)
    if isinstance(step, _Enlist):
        return store._run(store._enlist_op([step]))
    return store._run(step)


def keys_of(client: redis.cluster.RedisCluster, prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{prefix}/*", count=1000, target_nodes="primaries"))


def keys_per_primary(redis_cluster: RedisCluster, prefix: str) -> dict[int, int]:
    out = {}
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as client:
            out[port] = sum(1 for _ in client.scan_iter(match=f"{prefix}/*", count=1000))
    return out


# The key behaviours ------------------------------------------------------------------


def test_connect_join_leave_disconnect_keep_counts_exact(make_node: Callable[..., Node]) -> None:
    a, b = make_node(), make_node()
    store = a.store
    c1 = a.connect("u1", groups=("room", "lobby"))
    c2 = b.connect("u2", groups=("room",))
    anon = b.connect(None, groups=("room",))

    assert store.join(c1, ("extra", "room")) == ("extra",)
    assert store.group_sizes(("room", "lobby", "extra", "none")) == {
        "room": 3,
        "lobby": 1,
        "extra": 1,
        "none": 0,
    }
    assert (store.group_size("room"), store.group_user_count("room")) == (3, 2)
    assert store.groups() == {"extra": 1, "lobby": 1, "room": 3}
    assert store.group_count() == 3
    assert sorted(store.group_users("room")) == ["u1", "u2"]
    members = {m.user: [c.conn_id for c in m.connections] for m in store.group_members("room")}
    assert members == {"u1": [c1.conn_id], "u2": [c2.conn_id], None: [anon.conn_id]}
    [found] = store.user_connections("u1")
    assert (found.conn_id, found.groups) == (c1.conn_id, ("room", "lobby", "extra"))
    # Metadata is one call in the user's slot (never the node's: another slot).
    assert store.set_meta(c1, {"role": "host"}) is True
    assert store.set_meta(anon, {"role": "guest"}) is True
    assert [c.meta for c in store.user_connections("u1")] == [{"role": "host"}]
    # Joins and metadata count the same on both sides: the beat sees no loss.
    assert (a.refresh().lost, b.refresh().lost) == (False, False)

    assert store.leave(c1, ("lobby", "nowhere")) == ("lobby",)
    assert store.groups() == {"extra": 1, "room": 3}
    departure = store.disconnect(c1)
    assert departure is not None
    assert (set(departure.user_left), departure.went_offline) == ({"room", "extra"}, True)
    assert store.disconnect(c1) is None
    assert store.disconnect(anon) is not None
    assert store.groups() == {"room": 1}
    assert (store.group_size("room"), store.group_user_count("room")) == (1, 1)


async def test_the_async_client_runs_the_same_steps(make_node: Callable[..., Node]) -> None:
    a = make_node()
    store = a.store
    c = a.conn("u1", groups=("room",))
    result = await store.aconnect(c, ONE)
    assert (result.accepted, result.came_online, result.user_joined) == (True, True, ("room",))
    assert await store.agroup_sizes(("room",)) == {"room": 1}
    assert await store.agroups() == {"room": 1}
    assert len(await store.agroup_members("room")) == 1
    assert (await a.arefresh()).lost is False
    departure = await store.adisconnect(c)
    assert departure is not None and departure.went_offline
    assert await store.agroups() == {}
    await store.aclose()


def test_disconnect_user_removes_every_connection_and_tells_each_node(
    make_node: Callable[..., Node],
) -> None:
    nodes = [make_node() for _ in range(3)]
    made = [
        n.connect("u1", session=f"s{i % 2}", groups=("room", f"g{i}"))
        for i, n in enumerate(nodes * 3)
    ]
    nodes[0].connect("u2", groups=("room",))

    departures = nodes[0].store.disconnect_user("u1", session="s0", code=4003)
    assert sorted(d.connection.conn_id for d in departures) == sorted(
        c.conn_id for c in made if c.session == "s0"
    )
    assert sum(d.went_offline for d in departures) == 0
    rest = nodes[0].store.disconnect_user("u1")
    assert sum(d.went_offline for d in rest) == 1
    store = nodes[0].store
    assert store.user_connections("u1") == ()
    assert store.groups() == {"room": 1}
    closed = [cid for n in nodes for cid in n.refresh().closed]
    assert sorted(closed) == sorted(c.conn_id for c in made)


def test_a_dead_nodes_connections_are_reaped_by_another_nodes_heartbeat(
    make_node: Callable[..., Node], cluster_client: redis.cluster.RedisCluster, key_prefix: str
) -> None:
    dead, live = make_node(ttl=1), make_node(ttl=1)
    gone = [dead.connect(f"u{i}", groups=("room", f"g{i % 3}")) for i in range(10)]
    gone.append(dead.connect(None, groups=("room",)))
    kept = live.connect("u0", groups=("room",))
    time.sleep(1 + SLACK)

    assert live.store.user_connections("u1") == ()  # listings leave it out at once
    expired = []
    while True:
        result = live.refresh()
        expired.extend(result.expired)
        if not result.more:
            break
    assert channels(expired) == channels(gone)
    assert sum(d.went_offline for d in expired) == 9  # u0 still has the live node's
    store = live.store
    assert store.groups() == {"room": 1}
    assert (store.group_size("room"), store.group_user_count("room")) == (1, 1)
    assert [c.conn_id for c in store.user_connections("u0")] == [kept.conn_id]
    assert dead.refresh().counted_out
    # What is left of the dead node is its marker.
    assert [k for k in keys_of(cluster_client, key_prefix) if f"/n{{{dead.id}}}" in k] == [
        f"{key_prefix}/n{{{dead.id}}}"
    ]


def test_a_reaper_that_dies_between_steps_leaves_work_the_next_one_completes(
    make_node: Callable[..., Node], make_store: Callable[..., ClusterRedisStore]
) -> None:
    dead = make_node(ttl=1)
    gone = [dead.connect(f"u{i}", groups=("room", "lobby")) for i in range(6)]
    survivor = make_node(ttl=30)
    survivor.connect("x", groups=("room",))
    time.sleep(1 + SLACK)

    for stop_after in range(1, 6):
        # A reaper that takes `stop_after` steps of a sweep, then dies.
        crashing = make_store(ttl=1)
        steps = crashing._sweep_steps()
        step: Any = next(steps)
        for _ in range(stop_after):
            reply = run_step(crashing, step)
            try:
                step = steps.send(reply)
            except StopIteration:
                break
        steps.close()

    departures = make_store(ttl=1).sweep()
    store = survivor.store
    # Every connection is gone exactly once, and the counts are exact.
    assert {d.connection.conn_id for d in departures} <= {c.conn_id for c in gone}
    assert store.group_sizes(("room", "lobby")) == {"room": 1, "lobby": 0}
    assert store.groups() == {"room": 1}
    assert store.group_user_count("room") == 1
    assert all(store.user_connections(f"u{i}") == () for i in range(6))


def test_leave_grace_holds_departures_and_a_quick_return_cancels_them(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(grace=1)
    first = node.connect("u1", groups=("room",))
    node.store.disconnect(first)
    again = node.store.connect(node.conn("u1", groups=("room",)), ONE)
    assert (again.came_online, again.user_joined) == (False, ())
    other = node.connect("u2", groups=("room",))
    node.store.disconnect(other)
    time.sleep(1 + SLACK)
    settled = node.store.settle()
    assert sorted((a.user, a.group or "") for a in settled) == [("u2", ""), ("u2", "room")]
    assert node.store.settle() == ()


def test_restore_reset_and_retire_run_per_slot(make_node: Callable[..., Node]) -> None:
    node = make_node()
    made = [node.connect(f"u{i}", groups=("room",)) for i in range(5)]
    node.store.reset(node.id)
    assert node.store.group_size("room") == 0
    result = node.store.restore(tuple(made), UNLIMITED)
    assert (result.restored, result.refused) == (5, ())
    assert node.store.group_size("room") == 5
    for c in made:
        node.store.disconnect(c)
    assert node.store.retire(node.id) is True
    assert node.store.groups() == {}


# Spread and slots ---------------------------------------------------------------------


def test_keys_spread_over_every_primary_and_each_call_stays_in_one_slot(
    make_node: Callable[..., Node],
    redis_cluster: RedisCluster,
    key_prefix: str,
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    nodes = [make_node(grace=30) for _ in range(4)]
    for i in range(200):
        nodes[i % 4].connect(f"u{i % 90}", groups=(f"g{i % 40}", "all"))
    for node in nodes:
        node.refresh()

    per_primary = keys_per_primary(redis_cluster, key_prefix)
    total = sum(per_primary.values())
    assert total == len(keys_of(cluster_client, key_prefix)) > 200
    # No primary holds everything; each holds a fair share of the slots' keys.
    assert all(n > total / 6 for n in per_primary.values()), per_primary
    # The same counts as redis-cli reads them (DBSIZE: the test prefix is alone).
    assert sum(redis_cluster.sizes().values()) >= total
    slots = {key_slot(k.encode()) for k in keys_of(cluster_client, key_prefix)}
    assert len(slots) > 100
    # Every key is one of the documented layout (one more kind on a cluster:
    # P/g{g}/c, the user connections counted in a group).
    layout = {
        **LAYOUT,
        "group connections": (r"/g\{[^{}]+\}/c", "set"),
        "pending shard": (r"/\{~p[0-9a-f]\}pending", "zset"),
        "registry times": (r"/\{~\}groupsv", "hash"),
    }
    nodes[0].store.disconnect_user("u1")  # a pending departure, in a shard
    kinds = set()
    for key in keys_of(cluster_client, key_prefix):
        [kind] = [
            k
            for k, (pattern, _) in layout.items()
            if re.fullmatch(re.escape(key_prefix) + pattern, key)
        ]
        assert cluster_client.type(key) == layout[kind][1]
        kinds.add(kind)
    expected = {"user", "group", "group count", "group connections", "node", "node bucket"}
    assert expected | {"nodes", "groups", "registry times", "pending shard"} <= kinds
    assert "pending" not in kinds  # the one-Redis key is not used on a cluster


def test_the_function_library_is_on_every_primary_and_reloaded_when_missing(
    make_node: Callable[..., Node], redis_cluster: RedisCluster
) -> None:
    node = make_node()
    node.connect("u1", groups=("room",))
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as client:
            [library] = client.function_list()
            assert LIBRARY.encode() in library
            # A primary that lost it (a new one, or a replica promoted).
            client.function_flush()
    node.connect("u2", groups=("room",))
    assert node.store.group_size("room") == 2


def test_a_hash_tag_prefix_runs_the_one_call_functions_on_one_primary(
    make_node: Callable[..., Node], redis_cluster: RedisCluster, key_prefix: str
) -> None:
    prefix = "{" + key_prefix + "}"
    node = make_node(prefix=prefix)
    for i in range(20):
        node.connect(f"u{i}", groups=(f"g{i}",))
    assert node.store.group_sizes(("g0", "g19")) == {"g0": 1, "g19": 1}
    assert sorted(keys_per_primary(redis_cluster, prefix).values())[:2] == [0, 0]


# The session limit under a race ---------------------------------------------------------


def test_twenty_racing_connects_of_one_user_leave_exactly_one(
    make_node: Callable[..., Node],
) -> None:
    nodes = [make_node() for _ in range(20)]
    policy = SessionPolicy(max_sessions=1, close_code=4005)
    start = threading.Barrier(20)
    made = [node.conn("u1", groups=("room", "lobby")) for node in nodes]

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
    assert store.group_sizes(("room", "lobby")) == {"room": 1, "lobby": 1}
    assert store.group_user_count("room") == 1
    notices: dict[str, tuple[str, int]] = {}
    for node in nodes:
        result = node.refresh()
        notices.update((c, (result.close_reasons[c], result.close_codes[c])) for c in result.closed)
    assert notices == dict.fromkeys(evicted, ("superseded", 4005))


@pytest.mark.parametrize("limit", [1, 3])
async def test_twenty_racing_connects_with_reject_new_accept_exactly_the_limit(
    make_node: Callable[..., Node], limit: int
) -> None:
    nodes = [make_node() for _ in range(20)]
    policy = SessionPolicy(max_sessions=limit, on_limit="reject_new")

    results = await asyncio.gather(
        *(node.store.aconnect(node.conn("u1", groups=("room",)), policy) for node in nodes)
    )

    assert sum(r.accepted for r in results) == limit
    assert {r.refused for r in results if not r.accepted} == {"limit"}
    assert len(await nodes[0].store.auser_connections("u1")) == limit
    assert await nodes[0].store.agroup_size("room") == limit
    for node in nodes:
        await node.store.aclose()


def test_max_connections_per_user_holds_under_a_race(make_node: Callable[..., Node]) -> None:
    nodes = [make_node() for _ in range(20)]
    policy = SessionPolicy(max_sessions=None, max_connections=4)
    start = threading.Barrier(20)

    def connect(node: Node) -> ConnectResult:
        conn = node.conn("u1", groups=("room",))
        start.wait()
        return node.store.connect(conn, policy)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(connect, nodes))
    assert sum(r.accepted for r in results) == 4
    assert nodes[0].store.group_size("room") == 4


# Settings and errors -----------------------------------------------------------------------


def test_a_standalone_store_on_a_cluster_says_to_set_redis_cluster(
    redis_cluster: RedisCluster, key_prefix: str
) -> None:
    store = RedisStore(redis_cluster.url, prefix=key_prefix)
    with pytest.raises(StoreUnavailable, match="REDIS_CLUSTER'\\] = True"):
        for i in range(10):  # some user lands on another primary, or a second slot
            Node(store).connect(f"u{i}", groups=("room", f"g{i}"))
    store.close()


def test_a_cluster_store_on_one_redis_says_it_is_not_a_cluster(
    redis_url: str, key_prefix: str
) -> None:
    store = ClusterRedisStore(redis_url, prefix=key_prefix)
    with pytest.raises(StoreUnavailable, match="not a Redis Cluster node"):
        store.group_size("room")
    store.close()


def test_get_store_builds_the_cluster_store_from_the_cache_and_its_seeds(
    redis_cluster: RedisCluster, key_prefix: str
) -> None:
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        },
        "presence": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": ",".join(redis_cluster.urls),
            "OPTIONS": {"SOCKET_TIMEOUT": 3},
        },
    }
    settings = {"CACHE": "presence", "KEY_PREFIX": key_prefix, "REDIS_CLUSTER": True}
    with override_settings(CACHES=caches, CHANNELS_PRESENCE=settings):
        store = get_store()
        assert isinstance(store, ClusterRedisStore)
        assert store.seeds == tuple(redis_cluster.urls)
        Node(store).connect("u1", groups=("room",))  # type: ignore[arg-type]
        assert store.group_size("room") == 1


def test_redis_cluster_needs_a_redis_cache_and_database_zero(redis_cluster: RedisCluster) -> None:
    with (
        override_settings(
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            CHANNELS_PRESENCE={"REDIS_CLUSTER": True},
        ),
        pytest.raises(ImproperlyConfigured, match="needs one of django_redis"),
    ):
        get_store()
    with pytest.raises(ImproperlyConfigured, match="database 0 only"):
        ClusterRedisStore(redis_cluster.url.replace("/0", "/2"))
    with (
        override_settings(CHANNELS_PRESENCE={"REDIS_CLUSTER": "yes"}),
        pytest.raises(ImproperlyConfigured, match="REDIS_CLUSTER"),
    ):
        get_store()


# Round trips -------------------------------------------------------------------------------


def _calls(redis_cluster: RedisCluster) -> dict[str, int]:
    total: dict[str, int] = {}
    for per_command in redis_cluster.calls().values():
        for name, n in per_command.items():
            total[name] = total.get(name, 0) + n
    return total


def test_a_connect_and_a_disconnect_are_one_call_per_slot_with_keys_read_locally(
    make_node: Callable[..., Node], redis_cluster: RedisCluster
) -> None:
    node = make_node()
    node.connect("other", groups=("room", "lobby"))  # the groups are not empty
    conn = node.conn("u1", groups=("room", "lobby"))

    def cost(operation: Callable[[], Any]) -> dict[str, int]:
        before = _calls(redis_cluster)
        operation()
        after = _calls(redis_cluster)
        wanted = ("fcall", "hexists", "hget", "command|getkeys", "cluster|slots")
        # HEXISTS and HGET also run inside functions: count those sent alone.
        return {k: after.get(k, 0) - before.get(k, 0) for k in wanted}

    # The node's bucket, the user's record, each group: one call each; then
    # the record is checked once more (a racing eviction); the client never
    # asks the server where an FCALL's key lives (COMMAND GETKEYS).
    connect = cost(lambda: node.store.connect(conn, UNLIMITED))
    assert (connect["fcall"], connect["command|getkeys"], connect["cluster|slots"]) == (4, 0, 0)
    disconnect = cost(lambda: node.store.disconnect(conn))
    assert (disconnect["fcall"], disconnect["hget"], disconnect["command|getkeys"]) == (3, 0, 0)
    assert node.store.group_sizes(("room", "lobby")) == {"room": 1, "lobby": 1}


async def test_a_burst_of_first_calls_on_a_fresh_process_all_land(
    make_node: Callable[..., Node],
) -> None:
    # Twenty connects at once on a store that never spoke to the cluster:
    # the client reads the slots once, and none of them fails meanwhile.
    node = make_node()
    made = [node.conn(f"u{i}", groups=("lobby",)) for i in range(20)]
    results = await asyncio.gather(*(node.store.aconnect(c, ONE) for c in made))
    assert all(r.accepted for r in results)
    assert await node.store.agroup_size("lobby") == 20
    await node.store.aclose()


def test_a_kick_that_dies_after_counting_out_the_groups_is_finished_by_the_next(
    make_node: Callable[..., Node], make_store: Callable[..., ClusterRedisStore]
) -> None:
    node = make_node()
    made = [node.connect("u1", groups=("room", f"g{i}")) for i in range(4)]
    node.connect("u2", groups=("room",))
    for stop_after in range(1, 4):
        # A process running disconnect_user that dies after `stop_after` steps.
        kicker = make_store()
        steps = kicker._disconnect_user_steps("u1", None, "kicked", None)
        step: Any = next(steps)
        for _ in range(stop_after):
            reply = run_step(kicker, step)
            try:
                step = steps.send(reply)
            except StopIteration:
                break
        steps.close()
        # Counted out first: a group never counts a connection no record holds.
        left = len(node.store.user_connections("u1"))
        assert node.store.group_size("room") <= left + 1
    node.store.disconnect_user("u1")
    assert node.store.user_connections("u1") == ()
    assert node.store.groups() == {"room": 1}
    assert node.store.group_user_count("room") == 1
    closed = node.refresh().closed
    assert set(closed) <= {c.conn_id for c in made}


def test_a_node_that_retired_and_connects_again_is_not_taken_for_lost(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    node.store.disconnect(node.connect("u1"))
    assert node.store.retire(node.id) is True

    node.connect("u2")

    assert node.refresh().lost is False


def test_a_disconnect_racing_a_kick_still_unlists_the_group_it_emptied(
    make_node: Callable[..., Node], make_store: Callable[..., ClusterRedisStore]
) -> None:
    """The socket's own disconnect counts it out of its group first; a kick
    then finds the group done and the record still there, and removes that; the
    disconnect's record step finds nothing. The group it emptied must still
    leave the registry (else ``group_count()`` counts it for good)."""
    node = make_node(grace=30)
    gone = node.connect("u1", groups=("room",))
    steps = node.store._disconnect_steps(gone)
    step: Any = next(steps)
    reply = run_step(node.store, step)  # the group step
    step = steps.send(reply)
    assert make_store(grace=30).disconnect_user("u1") != ()
    with contextlib.suppress(StopIteration):
        while True:
            step = steps.send(run_step(node.store, step))

    assert node.store.group_size("room") == 0
    assert (node.store.groups(), node.store.group_count()) == ({}, 0)


def test_a_disconnects_bucket_entry_goes_with_the_nodes_next_call(
    make_node: Callable[..., Node], cluster_client: redis.cluster.RedisCluster, key_prefix: str
) -> None:
    node = make_node()
    made = [node.connect(f"u{i}", groups=("room",)) for i in range(3)]
    for c in made:
        node.store.disconnect(c)
    bucket = f"{key_prefix}/n{{{node.id}}}/0"
    assert cluster_client.hlen(bucket) == 3  # not yet: no call on the node's slot since
    # The heartbeat carries them; the node's own writes still add up (no false "lost").
    assert node.refresh().lost is False
    assert cluster_client.exists(bucket) == 0
    assert node.refresh().lost is False
    last = node.connect("u9")
    node.store.disconnect(last)
    assert node.store.retire(node.id) is True


@pytest.mark.parametrize("who_ends_it", ["evicted disconnects", "evicted's node dies"])
def test_an_evicting_connect_that_dies_after_admitting_leaves_nothing_counted_for_long(
    make_node: Callable[..., Node],
    cluster_client: redis.cluster.RedisCluster,
    key_prefix: str,
    who_ends_it: str,
) -> None:
    old_node, other = make_node(ttl=1), make_node(ttl=30)
    old = old_node.connect("u1", ONE, groups=("room", "lobby"))
    other.connect("u2", groups=("room",))
    # A process evicts it, then dies after its c_admit (before the group steps).
    evictor = make_node(ttl=1)
    steps = evictor.store._connect_steps(evictor.conn("u1", groups=("room",)), ONE)
    step: Any = next(steps)
    for _ in range(3):  # c_enlist, listing the new node, c_admit
        step = steps.send(run_step(evictor.store, step))
    steps.close()
    store = other.store
    user_key = f"{key_prefix}/u{{u1}}"
    assert not cluster_client.hexists(user_key, old.conn_id)  # evicted
    assert cluster_client.hget(user_key, f"{old.conn_id}|g") == "room,lobby"
    assert store.group_size("lobby") == 1  # the evicted still counts, for now

    if who_ends_it == "evicted disconnects":
        assert store.disconnect(old) is None  # its record was gone already
        assert store.groups() == {"room": 1}
    time.sleep(1 + SLACK)
    while other.refresh().more:
        pass
    assert store.groups() == {"room": 1}
    assert (store.group_size("room"), store.group_user_count("room")) == (1, 1)
    # No list of groups is left behind in the user's hash.
    assert not cluster_client.exists(user_key)


async def test_concurrent_connects_of_one_node_share_its_bucket_writes(
    make_node: Callable[..., Node], redis_cluster: RedisCluster
) -> None:
    node = make_node()
    await node.store.aconnect(node.conn("warm"), UNLIMITED)
    made = [node.conn(f"u{i}", groups=("room",)) for i in range(30)]
    before = _calls(redis_cluster)["fcall"]
    results = await asyncio.gather(*(node.store.aconnect(c, UNLIMITED) for c in made))
    fcalls = _calls(redis_cluster)["fcall"] - before
    assert all(r.accepted for r in results)
    # 30 records and 30 count-ins, but far fewer than 30 calls on the node's slot.
    assert 60 < fcalls <= 60 + 10, fcalls
    assert await node.store.agroup_size("room") == 30
    for c in made:
        await node.store.adisconnect(c)
    assert (await node.arefresh()).lost is False
    assert await node.store.aretire(node.id) is False  # "warm" is still there
    await node.store.aclose()


async def test_an_unreachable_cluster_raises_store_unavailable_naming_it(key_prefix: str) -> None:
    port = free_port()
    store = ClusterRedisStore(f"redis://user:s3cret@127.0.0.1:{port}/0", prefix=key_prefix)
    with pytest.raises(StoreUnavailable) as sync_error:
        store.group_size("room")
    with pytest.raises(StoreUnavailable) as async_error:
        await store.agroup_size("room")
    for error in (sync_error, async_error):
        assert f"127.0.0.1:{port}" in str(error.value)
        assert "s3cret" not in str(error.value)
    await store.aclose()


def test_departures_a_dead_process_left_pending_are_claimed_by_another_heartbeat(
    make_node: Callable[..., Node],
) -> None:
    gone, live = make_node(grace=1), make_node(grace=1)
    for i in range(20):  # users over many of the pending shards
        gone.store.disconnect(gone.connect(f"u{i}", groups=("room",)))
    time.sleep(1 + SLACK)
    # The process that saw them never claims them (it died); another's heartbeat does.
    settled = []
    while True:
        result = live.refresh()
        settled.extend(result.settled)
        if not result.more:
            break
    assert sorted((a.user, a.group or "") for a in settled) == sorted(
        (f"u{i}", g) for i in range(20) for g in ("", "room")
    )
    assert gone.store.settle() == ()


def test_registry_changes_that_cross_on_the_way_apply_in_the_order_their_groups_saw_them(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    store = node.store
    # Two processes' steps: one saw "room" empty at t=1, another saw it fill
    # at t=2; the "filled" reaches the {~} slot first.
    first, later = store._shared_ops([("R+", "room", "2.0")])[0], None
    store._pipelined(_Batch(tuple(first)))
    later = store._shared_ops([("R-", "room", "1.0")])[0]
    store._pipelined(_Batch(tuple(later)))
    assert store.group_count() == 1  # still listed: the older "emptied" lost
    store._pipelined(_Batch(tuple(store._shared_ops([("R-", "room", "3.0")])[0])))
    assert store.group_count() == 0
    # And the real thing, through the steps: counts and registry agree.
    c = node.connect("u1", groups=("room",))
    assert store.groups() == {"room": 1}
    store.disconnect(c)
    assert (store.groups(), store.group_count()) == ({}, 0)


def test_refused_connects_hide_no_loss_of_the_nodes_writes(
    make_node: Callable[..., Node], cluster_client: redis.cluster.RedisCluster
) -> None:
    """A refused connect is counted on both sides (c_enlist counts it), so a
    write the store lost afterwards still shows at the next beat."""
    a = make_node()
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")
    assert a.store.connect(a.conn("u1"), policy).accepted
    for _ in range(3):
        assert a.store.connect(a.conn("u1"), policy).refused == "limit"
    assert a.refresh().lost is False
    # Redis went back in time by one write of this node (a failover that lost it).
    cluster_client.hincrby(a.store._node_key(a.id), "w", -1)
    assert a.refresh().lost is True
