"""The store contract: every store must behave the same through the protocol.

Each test runs against every store (the embedded LocalStore and RedisStore on
a real Redis) and through both forms of each operation (``aconnect`` and
``connect``...), via the ``store`` fixture.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from channels_presence.stores.base import (
    Connection,
    ConnectResult,
    Departure,
    PresenceStore,
    SessionPolicy,
)
from channels_presence.stores.local import LocalStore

UNLIMITED = SessionPolicy(max_sessions=None)
ONE = SessionPolicy(max_sessions=1)
TTL = 60.0
#: The node (event loop) the tests' connections belong to, unless they say otherwise.
NODE = "node1"
_seq = itertools.count(1)
#: The latest connection made under each channel name, for calls that name a channel.
_made: dict[str, Connection] = {}


def conn(
    channel: str,
    user: str | None = "u1",
    session: str | None = None,
    groups: tuple[str, ...] = (),
    meta: dict[str, Any] | None = None,
    node: str = NODE,
) -> Connection:
    """A new connection as a consumer would hand it to the store."""
    made = Connection(
        channel, user, session, groups=groups, meta=meta, conn_id=f"{node}.{next(_seq):x}"
    )
    _made[channel] = made
    return made


def known(channel: str) -> Connection:
    """The connection last made under ``channel`` (a fresh one if none was)."""
    return _made.get(channel) or conn(channel)


_BY_CONNECTION = ("disconnect", "join", "leave", "set_meta")


class Api:
    """One store seen through either its async or its sync methods.

    ``await api.connect(...)`` runs ``store.aconnect`` or ``store.connect``,
    so each test body checks both forms.
    """

    def __init__(self, store: PresenceStore, mode: str, wipe: Callable[[], None]) -> None:
        self.store = store
        self.mode = mode
        #: Lose everything the store holds, as a flush or restart would.
        self.wipe = wipe

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.store, f"a{name}" if self.mode == "async" else name)

        async def call(*args: Any) -> Any:
            if name in _BY_CONNECTION and isinstance(args[0], str):
                # Tests name connections by channel; the store takes the connection.
                args = (known(args[0]), *args[1:])
            result = method(*args)
            return await result if self.mode == "async" else result

        return call

    def __repr__(self) -> str:
        return f"<{self.mode} {self.store!r}>"


def _local(key_prefix: str, ttl: float, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    store = LocalStore("default", prefix=key_prefix, ttl=ttl)
    # The default cache is local memory, so the state is in process memory.
    return store, store.cache.clear


def _redis(key_prefix: str, ttl: float, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    import redis

    from channels_presence.stores.redis import RedisStore

    url = request.getfixturevalue("redis_url")
    store = RedisStore(url, prefix=key_prefix, ttl=ttl)

    def wipe() -> None:
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=f"{key_prefix}/*", count=1000))
            if keys:
                client.delete(*keys)

    return store, wipe


def _sentinel(key_prefix: str, ttl: float, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """The Redis store behind Sentinel: it finds the primary through the sentinels."""
    from channels_presence.stores.redis import RedisStore

    setup = request.getfixturevalue("sentinel_setup")
    store = RedisStore(
        setup.location(), sentinels=setup.sentinel_addresses, prefix=key_prefix, ttl=ttl
    )

    def wipe() -> None:
        with setup.primary().client() as client:
            keys = list(client.scan_iter(match=f"{key_prefix}/*", count=1000))
            if keys:
                client.delete(*keys)

    return store, wipe


def _local_on_cache_api(
    key_prefix: str, ttl: float, request: pytest.FixtureRequest
) -> tuple[Any, Any]:
    """The embedded store on a cache it must reach through the cache API."""
    from django.core.cache import caches
    from django.test import override_settings

    folder = request.getfixturevalue("tmp_path")
    files = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(folder / "cache"),
    }
    cm = override_settings(
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "files": files,
        }
    )
    cm.enable()
    request.addfinalizer(cm.disable)
    store = LocalStore("files", prefix=key_prefix, ttl=ttl)
    assert store.cache is caches["files"]
    return store, caches["files"].clear


STORES = [
    pytest.param(_local, id="local"),
    pytest.param(_local_on_cache_api, id="local-cache-api"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
    pytest.param(_sentinel, id="sentinel", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORES)
def make_store(
    request: pytest.FixtureRequest, key_prefix: str
) -> Callable[..., tuple[PresenceStore, Callable[[], None]]]:
    """Build the store under test (with a TTL of the test's choosing)."""
    made: list[Any] = []

    def make(ttl: float = TTL) -> tuple[PresenceStore, Callable[[], None]]:
        store, wipe = request.param(key_prefix, ttl, request)
        made.append(store)
        return store, wipe

    yield make  # type: ignore[misc]
    for store in made:
        store.close()


@pytest.fixture(params=["async", "sync"])
async def store(
    request: pytest.FixtureRequest, make_store: Callable[..., Any]
) -> AsyncIterator[Api]:
    """The store under test, through its async or its sync methods."""
    raw, wipe = make_store()
    yield Api(raw, request.param, wipe)
    if request.param == "async":
        await raw.aclose()


def channels(departures: tuple[Departure, ...]) -> list[str]:
    return [d.connection.channel_name for d in departures]


async def populations(store: Api, group: str) -> tuple[int, int]:
    return await store.group_size(group), await store.group_user_count(group)


# Connecting ------------------------------------------------------------------


async def test_connect_records_the_connection(store: Api) -> None:
    result = await store.connect(
        conn("c1", "u1", "s1", groups=("room",), meta={"tab": 1}), UNLIMITED
    )

    assert result == ConnectResult(
        accepted=True,
        came_online=True,
        user_joined=("room",),
        connected_at=result.connected_at,
    )
    [recorded] = await store.user_connections("u1")
    # The store's clock, which the tracker keeps for heartbeats to write back.
    assert recorded.connected_at == pytest.approx(result.connected_at, abs=0.002)
    assert abs(result.connected_at - time.time()) < 5
    assert recorded.channel_name == "c1"
    assert (recorded.user, recorded.session, recorded.groups) == ("u1", "s1", ("room",))
    assert recorded.meta == {"tab": 1}
    assert recorded.connected_at == pytest.approx(time.time(), abs=5)
    assert await populations(store, "room") == (1, 1)
    assert await store.groups() == {"room": 1}


async def test_second_connection_of_a_user_is_not_coming_online(store: Api) -> None:
    await store.connect(conn("c1", groups=("room",)), UNLIMITED)

    result = await store.connect(conn("c2", groups=("room", "lobby")), UNLIMITED)

    assert result.came_online is False
    assert result.user_joined == ("lobby",)
    assert await populations(store, "room") == (2, 1)
    assert await populations(store, "lobby") == (1, 1)


async def test_user_connections_are_oldest_first(store: Api) -> None:
    for channel in ("c1", "c2", "c3"):
        await store.connect(conn(channel), UNLIMITED)

    found = await store.user_connections("u1")

    assert [c.channel_name for c in found] == ["c1", "c2", "c3"]
    assert [c.connected_at for c in found] == sorted(c.connected_at for c in found)


async def test_anonymous_connections_count_as_connections_not_users(store: Api) -> None:
    for channel in ("a1", "a2", "a3"):
        result = await store.connect(conn(channel, user=None, groups=("room",)), ONE)
        assert result.accepted and result.evicted == ()
        assert result.user_joined == ()
    await store.connect(conn("c1", "u1", groups=("room",)), ONE)

    assert await populations(store, "room") == (4, 1)
    members = {m.user: len(m.connections) for m in await store.group_members("room")}
    assert members == {None: 3, "u1": 1}


async def test_group_members_groups_connections_by_user(store: Api) -> None:
    await store.connect(conn("c1", "u1", groups=("room",)), UNLIMITED)
    await store.connect(conn("c2", "u2", groups=("room",)), UNLIMITED)
    await store.connect(conn("c3", "u1", groups=("room",)), UNLIMITED)
    await store.connect(conn("c4", "u3", groups=("elsewhere",)), UNLIMITED)

    members = await store.group_members("room")

    assert sorted((m.user, [c.channel_name for c in m.connections]) for m in members) == [
        ("u1", ["c1", "c3"]),
        ("u2", ["c2"]),
    ]
    assert await store.group_members("nobody-here") == ()


async def test_group_sizes_reads_many_groups(store: Api) -> None:
    await store.connect(conn("c1", "u1", groups=("a", "b")), UNLIMITED)
    await store.connect(conn("c2", "u2", groups=("a",)), UNLIMITED)

    assert await store.group_sizes(("a", "b", "empty")) == {"a": 2, "b": 1, "empty": 0}
    assert await store.group_sizes(()) == {}
    assert await store.groups() == {"a": 2, "b": 1}


async def test_group_count_counts_the_groups_with_a_connection(store: Api) -> None:
    assert await store.group_count() == 0
    await store.connect(conn("c1", "u1", groups=("a", "b")), UNLIMITED)
    await store.connect(conn("c2", "u2", groups=("a", "c")), UNLIMITED)
    assert await store.group_count() == 3

    await store.leave("c2", ("c",))
    await store.disconnect("c1")
    assert await store.group_count() == len(await store.groups()) == 1
    await store.disconnect("c2")
    assert await store.group_count() == 0


# Disconnecting ---------------------------------------------------------------


async def test_disconnect_reports_what_changed(store: Api) -> None:
    await store.connect(conn("c1", groups=("room", "lobby")), UNLIMITED)
    await store.connect(conn("c2", groups=("room",)), UNLIMITED)

    first = await store.disconnect("c2")
    assert first is not None
    assert first.connection.channel_name == "c2"
    assert first.connection.groups == ("room",)
    assert (first.user_left, first.went_offline) == ((), False)

    last = await store.disconnect("c1")
    assert last is not None
    assert sorted(last.user_left) == ["lobby", "room"]
    assert last.went_offline is True


async def test_disconnect_of_an_unknown_channel_is_none(store: Api) -> None:
    assert await store.disconnect("never-connected") is None


async def test_counts_go_back_to_zero_and_never_below(store: Api) -> None:
    await store.connect(conn("c1", "u1", groups=("room",)), UNLIMITED)
    await store.connect(conn("c2", "u2", groups=("room",)), UNLIMITED)
    await store.connect(conn("a1", None, groups=("room",)), UNLIMITED)

    for channel in ("c1", "c2", "a1"):
        assert await store.disconnect(channel) is not None
    # Everything again, twice over: nothing may go negative.
    for channel in ("c1", "c2", "a1"):
        assert await store.disconnect(channel) is None
        assert await store.leave(channel, ("room",)) == ()

    assert await populations(store, "room") == (0, 0)
    assert await store.group_sizes(("room",)) == {"room": 0}
    assert await store.group_members("room") == ()
    assert await store.user_connections("u1") == ()
    assert await store.groups() == {}


# Groups ----------------------------------------------------------------------


async def test_join_returns_groups_the_user_newly_joined(store: Api) -> None:
    await store.connect(conn("c1", groups=("room",)), UNLIMITED)
    await store.connect(conn("c2"), UNLIMITED)

    assert await store.join("c2", ("room", "lobby")) == ("lobby",)
    assert await store.join("c2", ("lobby",)) == ()
    assert await populations(store, "room") == (2, 1)
    assert await populations(store, "lobby") == (1, 1)
    [_, c2] = await store.user_connections("u1")
    assert sorted(c2.groups) == ["lobby", "room"]


async def test_join_of_an_unknown_channel_changes_nothing(store: Api) -> None:
    assert await store.join("ghost", ("room",)) == ()
    assert await populations(store, "room") == (0, 0)


async def test_leave_returns_groups_the_user_is_no_longer_in(store: Api) -> None:
    await store.connect(conn("c1", groups=("room", "lobby")), UNLIMITED)
    await store.connect(conn("c2", groups=("room",)), UNLIMITED)

    assert await store.leave("c1", ("room", "lobby", "never-joined")) == ("lobby",)
    assert await populations(store, "room") == (1, 1)
    assert await populations(store, "lobby") == (0, 0)
    assert await store.leave("c2", ("room",)) == ("room",)
    assert await populations(store, "room") == (0, 0)
    assert await store.groups() == {}
    # Still connected, in no group.
    assert [c.channel_name for c in await store.user_connections("u1")] == ["c1", "c2"]


async def test_set_meta_replaces_the_metadata(store: Api) -> None:
    await store.connect(conn("c1", meta={"a": 1}), UNLIMITED)

    assert await store.set_meta("c1", {"b": [1, 2], "empty": {}}) is True
    [found] = await store.user_connections("u1")
    assert found.meta == {"b": [1, 2], "empty": {}}
    assert await store.set_meta("c1", None) is True
    [found] = await store.user_connections("u1")
    assert found.meta is None
    assert await store.set_meta("ghost", {"a": 1}) is False


# Session limits --------------------------------------------------------------


async def test_close_oldest_evicts_the_oldest_connection(store: Api) -> None:
    policy = SessionPolicy(max_sessions=2)
    await store.connect(conn("c1", groups=("old",)), policy)
    await store.connect(conn("c2", groups=("room",)), policy)

    result = await store.connect(conn("c3", groups=("room",)), policy)

    assert result.accepted is True
    assert channels(result.evicted) == ["c1"]
    [evicted] = result.evicted
    # Computed after c3 was recorded: the user is still online, has left "old".
    assert (evicted.user_left, evicted.went_offline) == (("old",), False)
    assert result.came_online is False
    assert result.user_joined == ()
    assert [c.channel_name for c in await store.user_connections("u1")] == ["c2", "c3"]
    assert await populations(store, "old") == (0, 0)


async def test_eviction_within_a_shared_group_is_not_a_leave(store: Api) -> None:
    await store.connect(conn("c1", groups=("room",)), ONE)

    result = await store.connect(conn("c2", groups=("room",)), ONE)

    [evicted] = result.evicted
    assert evicted.connection.channel_name == "c1"
    assert (evicted.user_left, evicted.went_offline) == ((), False)
    assert (result.came_online, result.user_joined) == (False, ())
    assert await populations(store, "room") == (1, 1)


async def test_limits_are_per_user(store: Api) -> None:
    await store.connect(conn("c1", "u1"), ONE)

    result = await store.connect(conn("c2", "u2"), ONE)

    assert result.evicted == ()
    assert result.came_online is True


async def test_reject_new_refuses_and_writes_nothing(store: Api) -> None:
    policy = SessionPolicy(max_sessions=1, on_limit="reject_new")
    await store.connect(conn("c1", "u1", "s1", groups=("room",)), policy)
    before = (
        await store.user_connections("u1"),
        await store.group_members("room"),
        await store.groups(),
    )

    result = await store.connect(conn("c2", "u1", "s2", groups=("room", "new")), policy)

    assert result == ConnectResult(accepted=False, refused="limit")
    after = (
        await store.user_connections("u1"),
        await store.group_members("room"),
        await store.groups(),
    )
    assert after == before
    assert await populations(store, "new") == (0, 0)
    assert await store.set_meta("c2", {}) is False


async def test_unlimited_sessions_never_evict(store: Api) -> None:
    for i in range(10):
        result = await store.connect(conn(f"c{i}"), UNLIMITED)
        assert result.evicted == ()
    assert len(await store.user_connections("u1")) == 10


async def test_session_scope_counts_django_sessions_not_tabs(store: Api) -> None:
    policy = SessionPolicy(max_sessions=1, scope="session")
    await store.connect(conn("tab1", session="s1", groups=("room",)), policy)

    second_tab = await store.connect(conn("tab2", session="s1", groups=("room",)), policy)
    assert second_tab.evicted == ()
    assert await populations(store, "room") == (2, 1)

    other_browser = await store.connect(conn("tab3", session="s2", groups=("lobby",)), policy)
    assert sorted(channels(other_browser.evicted)) == ["tab1", "tab2"]
    # The whole old session went, and with it the user's presence in "room"
    # (reported once, on its last connection).
    left = [d.user_left for d in other_browser.evicted]
    assert sorted(left) == [(), ("room",)]
    assert not any(d.went_offline for d in other_browser.evicted)
    assert other_browser.user_joined == ("lobby",)
    assert [c.channel_name for c in await store.user_connections("u1")] == ["tab3"]
    assert await populations(store, "room") == (0, 0)


async def test_session_scope_connection_without_session_is_its_own(store: Api) -> None:
    policy = SessionPolicy(max_sessions=2, scope="session")
    await store.connect(conn("c1", session=None), policy)
    await store.connect(conn("c2", session=None), policy)

    result = await store.connect(conn("c3", session=None), policy)

    assert channels(result.evicted) == ["c1"]


async def test_session_scope_evicts_the_oldest_session(store: Api) -> None:
    policy = SessionPolicy(max_sessions=2, scope="session")
    await store.connect(conn("a1", session="sa"), policy)
    await store.connect(conn("b1", session="sb"), policy)
    # A later tab of the oldest session does not make that session newer.
    await store.connect(conn("a2", session="sa"), policy)

    result = await store.connect(conn("c1", session="sc"), policy)

    assert sorted(channels(result.evicted)) == ["a1", "a2"]
    remaining = [c.channel_name for c in await store.user_connections("u1")]
    assert remaining == ["b1", "c1"]


# Disconnecting a user --------------------------------------------------------


async def test_disconnect_user_removes_every_connection(store: Api) -> None:
    await store.connect(conn("c1", "u1", groups=("room", "lobby")), UNLIMITED)
    await store.connect(conn("c2", "u1", groups=("room",)), UNLIMITED)
    await store.connect(conn("c3", "u2", groups=("room",)), UNLIMITED)

    departures = await store.disconnect_user("u1")

    assert sorted(channels(departures)) == ["c1", "c2"]
    left = sorted(g for d in departures for g in d.user_left)
    assert left == ["lobby", "room"]  # each group exactly once
    assert [d.went_offline for d in departures].count(True) == 1
    assert await store.user_connections("u1") == ()
    assert await populations(store, "room") == (1, 1)
    assert await store.disconnect_user("u1") == ()
    assert await store.disconnect_user("nobody") == ()


# Heartbeats ------------------------------------------------------------------


async def test_refresh_keeps_connections_and_reports_nothing(store: Api) -> None:
    c1 = conn("c1", groups=("room",))
    await store.connect(c1, UNLIMITED)

    result = await store.refresh(NODE)

    assert (result.closed, result.expired, result.lost, result.counted_out) == (
        (),
        (),
        False,
        False,
    )
    assert await populations(store, "room") == (1, 1)
    assert (await store.refresh(NODE)).closed == ()


async def test_refresh_reports_connections_removed_elsewhere(store: Api) -> None:
    local = (conn("c1", "u1"), conn("c2", "u2"), conn("c3", "u3"))
    for c in local:
        await store.connect(c, UNLIMITED)
    await store.connect(conn("c1-new", "u1", node="node2"), ONE)  # evicts c1
    await store.disconnect_user("u2", None, "kicked", 4005)  # removes c2

    result = await store.refresh(NODE)

    assert sorted(result.closed) == sorted([local[0].conn_id, local[1].conn_id])
    assert result.close_reasons[local[0].conn_id] == "superseded"
    assert result.close_reasons[local[1].conn_id] == "kicked"
    assert result.close_codes[local[1].conn_id] == 4005
    # Told once: the next heartbeat has nothing more to say.
    assert (await store.refresh(NODE)).closed == ()
    assert [c.channel_name for c in await store.user_connections("u1")] == ["c1-new"]
    assert await store.user_connections("u2") == ()


async def test_refresh_reports_a_lost_node_and_restore_writes_it_back(store: Api) -> None:
    local = (
        conn("c1", "u1", "s1", groups=("room",), meta={"x": 1}),
        conn("c2", "u2", groups=("room", "lobby")),
        conn("a1", None, groups=("room",)),
    )
    for c in local:
        await store.connect(c, UNLIMITED)
    store.wipe()
    assert await populations(store, "room") == (0, 0)
    # A connect after the loss does not hide it from the heartbeat.
    await store.connect(conn("c4", "u4"), UNLIMITED)

    assert (await store.refresh(NODE)).lost is True
    result = await store.restore(local, UNLIMITED)

    assert (result.restored, result.refused) == (3, ())
    assert await populations(store, "room") == (3, 2)
    assert await populations(store, "lobby") == (1, 1)
    assert await store.groups() == {"lobby": 1, "room": 3}
    [c1] = await store.user_connections("u1")
    assert (c1.session, c1.meta, c1.groups) == ("s1", {"x": 1}, ("room",))
    # Written back once; the next heartbeat finds the node in place.
    assert (await store.refresh(NODE)).lost is False
    assert (await store.restore(local, UNLIMITED)).restored == 0


async def test_restore_does_not_write_back_past_the_session_limit(store: Api) -> None:
    """After a flush, a connect that saw none of the user's older connections got in;
    writing the older one back would exceed the limit, so it is refused instead."""
    older = conn("old", "u1", "s1", groups=("room",))
    await store.connect(older, ONE)
    store.wipe()
    newer = await store.connect(conn("new", "u1", "s2", groups=("room",), node="node2"), ONE)
    assert newer.accepted and newer.evicted == ()

    result = await store.restore((older,), ONE)

    assert (result.restored, result.refused) == (0, (older.conn_id,))
    assert [c.channel_name for c in await store.user_connections("u1")] == ["new"]
    assert await populations(store, "room") == (1, 1)
    # Same session (session scope): a tab of the live session is written back.
    tab = conn("tab", "u1", "s2", groups=("room",))
    scoped = SessionPolicy(max_sessions=1, scope="session")
    assert (await store.restore((tab,), scoped)).restored == 1


@pytest.mark.parametrize("fence_session", [True, False])
async def test_a_write_back_refuses_what_a_logout_fenced_while_the_store_was_lost(
    store: Api, fence_session: bool
) -> None:
    opened = time.time() - 1
    mine = replace(conn("c1", "u1", "s1", groups=("room",)), opened_at=opened)
    kept = replace(conn("c2", "u2", "s2", groups=("room",)), opened_at=opened)
    for c in (mine, kept):
        await store.connect(c, UNLIMITED)
    store.wipe()
    await store.fence("u1", "s1" if fence_session else None)

    result = await store.restore((mine, kept), UNLIMITED)

    assert (result.restored, result.refused, result.logged_out) == (1, (), (mine.conn_id,))
    assert await store.user_connections("u1") == ()
    assert await populations(store, "room") == (1, 1)


async def test_max_connections_per_user_refuses_past_the_limit(store: Api) -> None:
    policy = SessionPolicy(max_sessions=None, max_connections=2)
    for channel in ("c1", "c2"):
        assert (await store.connect(conn(channel), policy)).accepted

    refused = await store.connect(conn("c3", groups=("room",)), policy)

    assert (refused.accepted, refused.refused) == (False, "connections")
    assert await populations(store, "room") == (0, 0)
    # Another user is not affected.
    assert (await store.connect(conn("d1", "u2"), policy)).accepted


async def test_a_session_that_makes_room_counts_out_of_the_connection_limit(
    store: Api,
) -> None:
    """The older session's connections leave as the new one comes: they do not
    count against ``max_connections`` (a refusal there also kept the old session)."""
    policy = SessionPolicy(max_sessions=1, scope="session", max_connections=2)
    for channel in ("c1", "c2"):
        assert (await store.connect(conn(channel, "u1", "s1"), policy)).accepted

    result = await store.connect(conn("c3", "u1", "s2"), policy)

    assert (result.accepted, result.refused) == (True, "")
    assert sorted(d.connection.channel_name for d in result.evicted) == ["c1", "c2"]
    assert [c.channel_name for c in await store.user_connections("u1")] == ["c3"]


async def test_a_refusal_by_the_connection_limit_leaves_the_sessions_as_they_were(
    store: Api,
) -> None:
    """Refused by ``max_connections`` although a session would have made room:
    that session still counts, so the next connect of another session evicts it."""
    roomy = SessionPolicy(max_sessions=2, scope="session", max_connections=3)
    await store.connect(conn("c1", "u1", "s1"), roomy)
    await store.connect(conn("c2", "u1", "s2"), roomy)
    await store.connect(conn("c3", "u1", "s2"), roomy)
    # The limit was lowered: s1 would make room for one, but s2 alone fills it.
    policy = SessionPolicy(max_sessions=2, scope="session", max_connections=2)
    assert (await store.connect(conn("c4", "u1", "s3"), policy)).refused == "connections"

    await store.disconnect("c3")
    result = await store.connect(conn("c5", "u1", "s4"), policy)

    assert (result.accepted, result.refused) == (True, "")
    assert [d.connection.channel_name for d in result.evicted] == ["c1"]
    assert sorted(c.channel_name for c in await store.user_connections("u1")) == ["c2", "c5"]


async def test_a_replayed_anonymous_connect_counts_once(store: Api) -> None:
    """A connect retried with the same id (its first try's reply was lost)."""
    anonymous = conn("a1", None, groups=("room",))
    await store.connect(anonymous, UNLIMITED)
    await store.connect(anonymous, UNLIMITED)
    assert await populations(store, "room") == (1, 0)

    await store.disconnect("a1")

    assert await populations(store, "room") == (0, 0)
    assert "room" not in await store.groups()


async def test_retire_forgets_an_empty_node_only(store: Api) -> None:
    c1 = conn("c1")
    await store.connect(c1, UNLIMITED)
    assert await store.retire(NODE) is False
    await store.disconnect("c1")
    assert await store.retire(NODE) is True


# Expiry ----------------------------------------------------------------------


async def test_a_dead_nodes_connections_are_removed_once(make_store: Callable[..., Any]) -> None:
    store, _ = make_store(ttl=1)
    await store.aconnect(conn("c1", "u1", groups=("room",), node="gone"), UNLIMITED)
    await store.aconnect(conn("c2", "u2", groups=("room",), node="kept"), UNLIMITED)
    await asyncio.sleep(0.6)
    await store.arefresh("kept")
    await asyncio.sleep(0.6)

    # The node of c1 stopped beating; listings leave it out at once.
    assert await store.auser_connections("u1") == ()
    assert [m.user for m in await store.agroup_members("room")] == ["u2"]

    swept = await store.asweep()
    assert channels(swept) == ["c1"]
    [departure] = swept
    assert (departure.user_left, departure.went_offline) == (("room",), True)
    assert await store.asweep() == ()
    assert await store.agroup_size("room") == 1
    assert await store.agroup_user_count("room") == 1
    # The dead node comes back to life no more: it was counted out.
    assert (await store.arefresh("gone")).counted_out is True
    refused = await store.aconnect(conn("c3", "u3", node="gone"), UNLIMITED)
    assert (refused.accepted, refused.refused) == (False, "counted_out")
    await store.aclose()


async def test_heartbeat_removes_other_nodes_connections(make_store: Callable[..., Any]) -> None:
    store, _ = make_store(ttl=1)
    await store.aconnect(conn("dead", "u1", groups=("room",), node="gone"), UNLIMITED)
    await asyncio.sleep(1.1)

    result = await store.arefresh("mine")

    assert channels(result.expired) == ["dead"]
    assert result.expired[0].went_offline is True
    # A node the store never saw beat before: nothing to write back, but it says so.
    assert result.lost is True
    assert (await store.arefresh("mine")).expired == ()
    await store.aclose()


async def test_refresh_says_when_the_next_node_is_due(make_store: Callable[..., Any]) -> None:
    store, _ = make_store(ttl=10)
    await store.aconnect(conn("c1", node="other"), UNLIMITED)

    result = await store.arefresh(NODE)

    assert result.next_check is not None and 9 < result.next_check <= 10
    await store.aclose()
