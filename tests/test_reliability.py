"""Closes that land, ghosts that go, sends and sockets that survive an outage.

Real stores, real channel layers and real Redis servers (the test's own,
stopped, paused and restarted as the fault needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.test import Client, override_settings

import channels_presence as presence
from channels_presence import listeners
from channels_presence.exceptions import TooManyGroups
from channels_presence.heartbeat import FORCE_CLOSE_AFTER, get_heartbeat
from channels_presence.logs import is_outage, store_failures
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, SessionPolicy
from channels_presence.stores.redis import RedisStore
from tests.asgi import application
from tests.conftest import FakeUser
from tests.redis_server import RedisServer, find_redis_server, free_port
from tests.test_consumers import closed_with


async def test_a_close_stuck_behind_a_slow_handler_is_forced_with_its_code(
    ws: Any, backend: str, presence_settings: Any
) -> None:
    """The old socket's handler is busy: the layer's close message waits behind
    it. Its own node's heartbeat closes it directly, with the code asked for."""
    presence_settings(LEAVE_GRACE=0)
    comm = await ws(user=1)
    await comm.send_json_to({"stall": 30})
    await asyncio.sleep(0.05)

    assert await presence.adisconnect_user(1, code=4005) == 1
    await get_heartbeat().beat()

    closed = await comm.receive_output(timeout=FORCE_CLOSE_AFTER + 3)
    assert closed == {"type": "websocket.close", "code": 4005}
    assert await presence.agroup_size("lobby") == 0


async def test_a_lost_close_message_is_replaced_by_the_heartbeat_with_its_code(
    ws: Any, backend: str, presence_settings: Any
) -> None:
    """Removed in the store with no message at all (as if the layer lost it)."""
    presence_settings(LEAVE_GRACE=0)
    comm = await ws(user=1)

    departures = await get_store().adisconnect_user("1", None, "kicked", 4005)
    assert len(departures) == 1
    await get_heartbeat().beat()

    assert await closed_with(comm, 4005)


def test_accepted_prefixes_never_share_a_key(backend: str, redis_url: str) -> None:
    if backend == "local":
        pytest.skip("key layout of the Redis store")
    site, nested = RedisStore(redis_url, prefix="site"), RedisStore(redis_url, prefix="site:group")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for store, node in ((site, "nodea"), (nested, "nodeb")):
            conn = Connection(f"c!{node}", "1", None, groups=("group",), conn_id=f"{node}.1")
            assert store.connect(conn, presence_policy()).accepted
        assert site.group_size("group") == 1 and nested.group_size("group") == 1
        mine = set(client.scan_iter(match="site/*"))
        theirs = set(client.scan_iter(match="site:group/*"))
        assert mine and theirs and not mine & theirs
        for key in mine | theirs:
            client.delete(key)
    finally:
        site.close()
        nested.close()
        client.close()


def presence_policy() -> Any:
    from channels_presence.stores import session_policy

    return session_policy()


# The store fails -------------------------------------------------------------------


@pytest.fixture
def down_store(key_prefix: str) -> Iterator[None]:
    """The presence cache points at a port where nothing listens."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url}},
        CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix, "ON_STORE_ERROR": "allow"},
    ):
        store_failures.failures = 0
        yield
    store_failures.failures = 0


async def test_under_allow_a_send_goes_out_when_the_store_cannot_say(
    ws: Any, backend: str, down_store: None
) -> None:
    comm = await ws(user=1)  # let in untracked: the store is down

    sent = await presence.agroup_send("lobby", {"type": "chat.message", "text": "hi"})

    assert sent == listeners.UNKNOWN
    assert await comm.receive_json_from() == {"chat": "hi"}
    # While the store keeps failing, sends do not wait for it again.
    assert store_failures.failing(listeners.RETRY_STORE_AFTER)
    assert await presence.agroup_send("lobby", {"type": "chat.message", "text": "again"}) == -1
    assert await comm.receive_json_from() == {"chat": "again"}


# Redis pauses and restarts -----------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary to pause and restart")
    server = RedisServer(binary)
    server.start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.close()


async def test_a_connect_refused_while_redis_was_paused_leaves_no_ghost(
    ws: Any, backend: str, own_redis: RedisServer, key_prefix: str
) -> None:
    """ON_STORE_ERROR="reject": the client got 1011, but its write waited in the
    paused Redis and ran when it resumed. The heartbeat takes it out again."""
    if backend == "local":
        pytest.skip("pausing Redis")
    cache = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": own_redis.url,
        "OPTIONS": {"SOCKET_TIMEOUT": 0.3},
    }
    settings = {"KEY_PREFIX": key_prefix, "ON_STORE_ERROR": "reject", "LEAVE_GRACE": 0}
    with override_settings(CACHES={"default": cache}, CHANNELS_PRESENCE=settings):
        await ws(user=5)  # the client and the functions are ready
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            refused = await ws(user=7, expect=False)
            assert await closed_with(refused, 1011) == []
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        await asyncio.sleep(0.2)
        # The queued connect ran after all: a ghost, until the heartbeat.
        assert await presence.ais_online(7)
        await get_heartbeat().beat()
        assert not await presence.ais_online(7)
        assert await presence.agroup_user_count("lobby") == 1
        store_failures.failures = 0


@pytest.fixture
async def redis_layer(own_redis: RedisServer) -> AsyncIterator[RedisServer]:
    """The default channel layer is channels_redis on a Redis of the test's own."""
    config = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": own_redis.url, "socket_timeout": 15}]},
        }
    }
    with override_settings(CHANNEL_LAYERS=config):
        channel_layers.backends.clear()
        yield own_redis
        layer = channel_layers.backends.get("default")
        if layer is not None:
            await layer.flush()
            await layer.close_pools()
        channel_layers.backends.clear()


async def test_sockets_survive_a_restart_of_the_layers_redis_and_hear_their_groups(
    ws: Any, backend: str, redis_layer: RedisServer
) -> None:
    comm = await ws(user=1)
    redis_layer.restart()  # its groups are gone with its data
    await asyncio.sleep(1.5)  # the consumer's reads fail, then reconnect

    assert comm.future.done() is False, "the consumer ended with the layer's Redis"
    await get_heartbeat().beat()  # puts the socket back into its groups
    sent = await presence.agroup_send("lobby", {"type": "chat.message", "text": "after"})
    assert sent == 1
    assert await comm.receive_json_from(timeout=3) == {"chat": "after"}


def test_connection_errors_of_any_client_library_count_as_outages() -> None:
    assert is_outage(ConnectionRefusedError())
    assert is_outage(redis.exceptions.ConnectionError("reset"))
    assert is_outage(redis.exceptions.BusyLoadingError("loading"))
    assert is_outage(redis.exceptions.TimeoutError())
    assert not is_outage(ValueError("a bug"))


# Logout fences ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", [True, "session"])
async def test_a_connect_in_flight_when_the_user_logs_out_is_refused(
    ws: Any, backend: str, presence_settings: Any, mode: Any
) -> None:
    """The connect's hook is still running when the logout comes; its store write
    lands after the logout closed everything, and must not survive it."""
    presence_settings(MAX_SESSIONS=None, DISCONNECT_ON_LOGOUT=mode, LEAVE_GRACE=0)
    user = await sync_to_async(get_user_model().objects.create_user)("fe", password="pw")
    browser = Client()
    await sync_to_async(browser.force_login)(user)
    old_key = browser.session.session_key

    connecting = asyncio.ensure_future(ws("/ws/slow/", user=user.pk, session=old_key, expect=False))
    await asyncio.sleep(0.1)  # the hook is running
    await sync_to_async(browser.logout)()
    comm = await connecting

    assert await closed_with(comm, 4002) == []
    assert not await presence.ais_online(user)
    assert await presence.agroup_size("lobby") == 0
    # The old cookie, replayed after the logout: still refused.
    replay = await ws("/ws/lobby/", user=user.pk, session=old_key, expect=False)
    assert await closed_with(replay, 4002) == []
    # A new login is a new session, opened after the logout: welcome.
    again = Client()
    await sync_to_async(again.force_login)(user)
    await ws("/ws/lobby/", user=user.pk, session=again.session.session_key)
    assert await presence.ais_online(user)


# Redis goes back in time ----------------------------------------------------------------


@pytest.mark.parametrize("first", ["old_node", "new_node"])
def test_a_restore_from_an_older_snapshot_keeps_the_newer_socket(
    backend: str, own_redis: RedisServer, key_prefix: str, first: str
) -> None:
    """X was live when Redis saved an RDB; the user then opened Z (superseding X);
    Redis restarts from that snapshot: X is back in it, Z is not. Each node's next
    heartbeat notices the store went back in time; X's node drops it, Z's node
    writes Z back, and Z (newer) wins whichever comes first."""
    if backend == "local":
        pytest.skip("an RDB snapshot of the Redis store")
    from channels_presence.stores.base import SessionPolicy

    one = SessionPolicy(max_sessions=1)
    store = RedisStore(own_redis.url, prefix=key_prefix, ttl=60)
    admin = redis.Redis.from_url(own_redis.url)
    try:
        x = Connection("specific.a!x", "1", "s1", groups=("lobby",), conn_id="nodea.1")
        z = Connection("specific.b!z", "1", "s2", groups=("lobby",), conn_id="nodeb.1")
        assert store.connect(x, one).accepted
        admin.save()
        newer = store.connect(z, one)
        assert [d.connection.conn_id for d in newer.evicted] == ["nodea.1"]
        # As the tracker keeps it: with the time the store recorded it.
        z = dataclasses.replace(z, connected_at=newer.connected_at)
        assert store.disconnect(x) is None  # X's socket closed; its node says so
        own_redis.restart()  # back to the snapshot: X recorded, Z not
        assert [c.conn_id for c in store.user_connections("1")] == ["nodea.1"]

        def resync(node: str, local: tuple[Connection, ...]) -> None:
            assert store.refresh(node).lost is True
            store.reset(node)
            store.restore(local, one)
            assert store.refresh(node).lost is False

        steps = [("nodea", ()), ("nodeb", (z,))]
        for node, local in steps if first == "old_node" else reversed(steps):
            resync(node, local)

        assert [c.conn_id for c in store.user_connections("1")] == ["nodeb.1"]
        assert (store.group_size("lobby"), store.group_user_count("lobby")) == (1, 1)
    finally:
        store.close()
        admin.close()


# Limits a client could push ----------------------------------------------------------------


async def test_a_connection_in_more_groups_than_allowed_is_refused_before_any_write(
    ws: Any, backend: str, presence_settings: Any
) -> None:
    presence_settings(MAX_GROUPS_PER_CONNECTION=2)
    comm = await ws(user=1)  # in "lobby"
    await comm.send_json_to({"join": "a"})
    assert await comm.receive_json_from() == {"joined": "a"}
    # A third group raises in the consumer (a server then closes the socket).
    await comm.send_json_to({"join": "b"})
    with pytest.raises(TooManyGroups, match="MAX_GROUPS_PER_CONNECTION allows 2"):
        await comm.receive_output(timeout=3)
    assert await presence.agroup_size("b") == 0
    assert await presence.agroup_size("a") == 0  # the consumer ended: its cleanup ran


async def test_connections_past_max_connections_per_user_are_refused(
    ws: Any, backend: str, presence_settings: Any, caplog: Any
) -> None:
    presence_settings(MAX_SESSIONS=None, MAX_CONNECTIONS_PER_USER=3)
    for _ in range(3):
        await ws(user=1)
    refused = await ws(user=1, expect=False)
    assert await closed_with(refused, 4003) == []
    assert await presence.agroup_size("lobby") == 3
    assert any("MAX_CONNECTIONS_PER_USER (3)" in r.getMessage() for r in caplog.records)


# Keys lost on their own ---------------------------------------------------------------
# A Redis that evicts under maxmemory (a cache's allkeys-lru) or an operator's
# DEL takes one key and leaves the rest: each case below loses one key under
# live connections, then checks every population against the truth.


@pytest.fixture
def lossy(redis_url: str, key_prefix: str) -> Iterator[tuple[RedisStore, redis.Redis]]:
    """A Redis store of the test's own prefix, and a client to delete its keys with."""
    store = RedisStore(redis_url, prefix=key_prefix, ttl=60)
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    yield store, admin
    for key in admin.scan_iter(match=f"{key_prefix}/*"):
        admin.delete(key)
    store.close()
    admin.close()


def _conn(node: str, seq: int, user: str | None, *groups: str) -> Connection:
    return Connection(
        f"specific.{node}!c{seq}",
        user,
        f"s{user}" if user else None,
        connected_at=1_700_000_000 + seq,
        groups=groups or ("lobby",),
        conn_id=f"{node}.{seq}",
    )


def _populations(store: RedisStore, group: str = "lobby") -> tuple[int, int, list[str], bool]:
    """Size, user count, users and whether listed; the listing must agree."""
    listed = sum(len(m.connections) for m in store.group_members(group))
    assert listed == store.group_size(group) or store.group_size(group) == 0, (
        f"{listed} connections listed, counted {store.group_size(group)}"
    )
    return (
        store.group_size(group),
        store.group_user_count(group),
        sorted(store.group_users(group)),
        group in store.groups(),
    )


def _heal(store: RedisStore, node: str, live: tuple[Connection, ...], policy: Any) -> Any:
    """One heartbeat's audit of ``live`` and the repair of what it found broken."""
    broken = store.refresh(node, live).broken
    result = store.repair(tuple(c for c in live if c.conn_id in broken), policy)
    kept = tuple(c for c in live if c.conn_id not in result.refused)  # the node closes those
    assert store.refresh(node, kept).broken == ()
    return broken, result


def _unlimited() -> SessionPolicy:
    return SessionPolicy(max_sessions=None)


def test_a_disconnect_after_its_record_was_lost_counts_it_out_of_its_groups(
    lossy: tuple[RedisStore, redis.Redis], key_prefix: str
) -> None:
    """Before: the lost connection stayed counted in "lobby" for good (even after
    its node was reaped), and user 1 stayed a member while user 2 kept the group."""
    store, admin = lossy
    one, two = _conn("nodea", 1, "1", "lobby", "room"), _conn("nodea", 2, "2")
    for c in (one, two):
        assert store.connect(c, _unlimited()).accepted
    admin.delete(f"{key_prefix}/u{{1}}")

    departure = store.disconnect(one)

    assert departure is not None and departure.connection.conn_id == "nodea.1"
    assert departure.user_left == ("lobby", "room") and departure.went_offline
    assert _populations(store) == (1, 1, ["2"], True)
    assert _populations(store, "room") == (0, 0, [], False)
    assert store.disconnect(one) is None  # once only: nothing of it is left
    assert store.disconnect(two) is not None
    assert _populations(store) == (0, 0, [], False)


def test_a_disconnect_whose_record_was_removed_by_others_counts_nothing_twice(
    lossy: tuple[RedisStore, redis.Redis],
) -> None:
    """The groups a node knows are used only while its bucket says the connection
    was never removed: an evicted connection's late disconnect changes nothing."""
    store, _ = lossy
    old, new = _conn("nodea", 1, "1"), _conn("nodeb", 1, "1")
    assert store.connect(old, presence_policy()).accepted
    assert store.connect(new, presence_policy()).evicted  # MAX_SESSIONS=1: old goes
    assert store.disconnect(old) is None
    assert _populations(store) == (1, 1, ["1"], True)


@pytest.mark.parametrize("lost", ["user", "anonymous"])
def test_records_lost_under_live_connections_are_written_back_by_the_heartbeat(
    lossy: tuple[RedisStore, redis.Redis], key_prefix: str, lost: str
) -> None:
    store, admin = lossy
    live = (_conn("nodea", 1, "1"), _conn("nodea", 2, "1"), _conn("nodea", 3, None))
    for c in live:
        assert store.connect(c, _unlimited()).accepted
    store.refresh("nodea")
    admin.delete(f"{key_prefix}/u{{1}}" if lost == "user" else f"{key_prefix}/n{{nodea}}/a")
    assert store.refresh("nodea").broken == ()  # nothing audited, nothing seen

    broken, result = _heal(store, "nodea", live, _unlimited())

    assert set(broken) == ({"nodea.1", "nodea.2"} if lost == "user" else {"nodea.3"})
    assert result.refused == ()
    assert [c.conn_id for c in store.user_connections("1")] == ["nodea.1", "nodea.2"]
    assert _populations(store) == (3, 1, ["1"], True)
    assert len(store.group_members("lobby")) == 2  # user 1 and the anonymous one
    for c in live:
        store.disconnect(c)
    assert _populations(store) == (0, 0, [], False)
    assert list(admin.scan_iter(match=f"{key_prefix}/u*")) == []


@pytest.mark.parametrize("lost", ["users", "count", "anonymous", "registry", "all"])
def test_a_lost_group_key_is_rebuilt_exactly_by_the_heartbeats_of_its_members(
    lossy: tuple[RedisStore, redis.Redis], key_prefix: str, lost: str
) -> None:
    store, admin = lossy
    mine = (_conn("nodea", 1, "1"), _conn("nodea", 2, "1"), _conn("nodea", 3, None))
    theirs = (_conn("nodeb", 1, "2"), _conn("nodeb", 2, "3"))
    for c in mine + theirs:
        assert store.connect(c, _unlimited()).accepted
    keys = {
        "users": [f"{key_prefix}/g{{lobby}}"],
        "count": [f"{key_prefix}/g{{lobby}}/n"],
        "anonymous": [f"{key_prefix}/g{{lobby}}/a"],
        "registry": [f"{key_prefix}/{{~}}groups"],
    }
    admin.delete(*(keys[lost] if lost != "all" else [k for ks in keys.values() for k in ks]))
    with contextlib.suppress(AssertionError):  # listed and counted may disagree now
        assert _populations(store) != (5, 3, ["1", "2", "3"], True)

    _heal(store, "nodea", mine, _unlimited())
    _heal(store, "nodeb", theirs, _unlimited())

    assert _populations(store) == (5, 3, ["1", "2", "3"], True)
    for c in mine + theirs:
        store.disconnect(c)
    assert _populations(store) == (0, 0, [], False)
    assert list(admin.scan_iter(match=f"{key_prefix}/g*")) == []


def test_an_audit_never_puts_back_a_connection_that_others_removed(
    lossy: tuple[RedisStore, redis.Redis],
) -> None:
    """Evicted by a newer connect (record and bucket entry gone), the old socket is
    still local to its node when the beat audits it: it must be closed, never
    written back (the soak test caught a ghost there: a lobby count one too low
    once the resurrected record was disconnected)."""
    store, _ = lossy
    old, new = _conn("nodea", 1, "1"), _conn("nodeb", 1, "1")
    assert store.connect(old, presence_policy()).accepted
    assert store.connect(new, presence_policy()).evicted

    result = store.refresh("nodea", (old,))

    assert result.broken == () and result.closed == ("nodea.1",)
    assert store.repair((old,), presence_policy()).restored == 0
    assert store.disconnect(old) is None
    assert _populations(store) == (1, 1, ["1"], True)


def test_a_lost_bucket_is_rebuilt_so_a_crash_still_removes_its_connections(
    lossy: tuple[RedisStore, redis.Redis], key_prefix: str, redis_url: str
) -> None:
    """Before: the node's crash left its connections counted for good (the reaper
    finds a node's connections through its buckets)."""
    _, admin = lossy
    store = RedisStore(redis_url, prefix=key_prefix, ttl=0.5)
    live = (_conn("nodea", 1, "1"), _conn("nodea", 200, "2"))  # buckets 0 and 1
    for c in live:
        assert store.connect(c, _unlimited()).accepted
    admin.delete(f"{key_prefix}/n{{nodea}}/0", f"{key_prefix}/n{{nodea}}/1")
    admin.hdel(f"{key_prefix}/n{{nodea}}", "b")

    broken, _ = _heal(store, "nodea", live, _unlimited())
    assert set(broken) == {"nodea.1", "nodea.200"}

    time.sleep(0.8)  # nodea stops beating: it crashed
    expired = store.sweep()
    assert sorted(d.connection.conn_id for d in expired) == ["nodea.1", "nodea.200"]
    assert _populations(store) == (0, 0, [], False)
    store.close()


def test_a_lost_record_that_no_longer_fits_the_limit_is_refused_and_counted_out(
    lossy: tuple[RedisStore, redis.Redis], key_prefix: str
) -> None:
    """MAX_SESSIONS=1: the user's record was lost, so their next connect saw none
    and was let in. The older connection is not written back past the limit."""
    store, admin = lossy
    old, new = _conn("nodea", 1, "1"), _conn("nodeb", 9, "1")
    assert store.connect(old, presence_policy()).accepted
    admin.delete(f"{key_prefix}/u{{1}}")
    assert store.connect(new, presence_policy()).evicted == ()
    assert store.group_size("lobby") == 2

    broken, result = _heal(store, "nodea", (old,), presence_policy())

    assert broken == ("nodea.1",) and result.refused == ("nodea.1",)
    assert [c.conn_id for c in store.user_connections("1")] == ["nodeb.9"]
    assert _populations(store) == (1, 1, ["1"], True)


def _lose_records(user: str) -> None:
    """Delete what the store keeps of ``user``'s connections, and nothing else."""
    store = get_store()
    if isinstance(store, RedisStore):
        with redis.Redis.from_url(store.url) as admin:
            assert admin.delete(f"{store.prefix}/u{{{user}}}") == 1
        return
    conns = store.cache.get(f"{store.prefix}:conns")  # type: ignore[attr-defined]
    users = store.cache.get(f"{store.prefix}:users")  # type: ignore[attr-defined]
    for channel in users.pop(user):
        del conns[channel]


async def test_sockets_whose_records_were_lost_are_written_back_and_counted_out_on_close(
    ws: Any, backend: str, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None, LEAVE_GRACE=0)
    first, second = await ws(user=1), await ws(user=1)
    await ws(user=2)
    _lose_records("1")
    assert not await presence.ais_online(1)

    await get_heartbeat().beat()  # one beat audits up to AUDIT_BATCH connections

    assert len(await presence.auser_channels(1)) == 2
    assert await presence.agroup_size("lobby") == 3
    _lose_records("1")
    await first.disconnect()
    await second.disconnect()
    assert (await presence.agroup_size("lobby"), await presence.agroup_members("lobby")) == (1, [2])


@pytest.mark.django_db(transaction=True)
async def test_a_socket_whose_record_was_lost_before_its_logout_is_closed_not_repaired(
    ws: Any, backend: str, presence_settings: Any
) -> None:
    """The logout found no record to remove (evicted just before): the audit
    must close the socket as logged out, not write it back."""
    presence_settings(MAX_SESSIONS=None, LEAVE_GRACE=0)
    user = await sync_to_async(get_user_model().objects.create_user)("lo", password="pw")
    browser = Client()
    await sync_to_async(browser.force_login)(user)
    mine = await ws(user=user.pk, session=browser.session.session_key)
    await ws(user=user.pk + 1000)
    _lose_records(str(user.pk))
    await sync_to_async(browser.logout)()

    await get_heartbeat().beat()

    assert await closed_with(mine, 4002) == [
        {"type": "session.superseded", "reason": "logged_out", "code": 4002}
    ]
    assert await presence.auser_channels(user.pk) == []
    assert await presence.agroup_members("lobby") == [user.pk + 1000]


# Cleanups that hang --------------------------------------------------------------------


async def test_a_consumer_raising_in_connect_after_one_that_closed_there_ends_and_leaves_nothing(
    ws: Any, backend: str, redis_layer: RedisServer, presence_settings: Any
) -> None:
    """Item 9: the refused socket's cancelled layer read let channels_redis (over
    redis-py) swallow the next consumer's cancellation and block again, so that
    application never ended, its cleanup never ran, and the heartbeat kept it
    counted for good (2 of 3 tries with real servers). The mixin's layer read
    now ends on cancellation, and cancels the layer's read until it ends."""
    presence_settings(ANONYMOUS="track", LEAVE_GRACE=0)
    for _ in range(3):
        refused = await ws("/ws/close-in-connect/", expect=False)  # closed with 1000
        await refused.send_input({"type": "websocket.disconnect", "code": 1006})  # as a server does
        await refused.wait(timeout=3)

        raising = WebsocketCommunicator(application, "/ws/crash/connect/")
        raising.scope["user"] = AnonymousUser()
        await raising.send_input({"type": "websocket.connect"})
        done, _ = await asyncio.wait([raising.future], timeout=3)
        assert done, "the application hung in its cleanup"
        with pytest.raises(RuntimeError, match="boom in connect"):
            raising.future.result()
        assert await presence.agroup_size("crash") == 0
        assert await presence.agroup_size("lobby") == 0
        assert len(get_heartbeat()) == 0


async def test_a_connection_whose_application_is_stuck_after_its_socket_ended_is_dropped(
    ws: Any, backend: str, presence_settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Its connect() refused the socket, then hung. Presence must not keep it: the
    first heartbeat STUCK_AFTER seconds after the socket ended drops it."""
    from channels_presence import heartbeat

    monkeypatch.setattr(heartbeat, "STUCK_AFTER", 0.3)
    presence_settings(LEAVE_GRACE=0)
    comm = WebsocketCommunicator(application, "/ws/hang/")
    comm.scope["user"] = FakeUser(1)
    await comm.send_input({"type": "websocket.connect"})
    assert (await comm.receive_output(timeout=3))["type"] == "websocket.close"
    assert await presence.ais_online(1)  # the application never returns to end it
    await get_heartbeat().beat()
    assert await presence.ais_online(1), "dropped before STUCK_AFTER"

    await asyncio.sleep(0.3)
    await get_heartbeat().beat()

    assert not await presence.ais_online(1)
    assert await presence.agroup_size("lobby") == 0
    assert len(get_heartbeat()) == 0
    assert any("had not finished" in r.getMessage() for r in caplog.records)
    comm.future.cancel()  # the stuck application itself is the test's to end


async def _join_while_down(comm: Any, redis_layer: RedisServer) -> None:
    """The client joins "room" while the layer's Redis is down; it comes back."""
    redis_layer.stop()
    try:
        await comm.send_json_to({"join": "room"})
        assert await comm.receive_json_from(timeout=5) == {"joined": "room"}
    finally:
        redis_layer.start()
    await asyncio.sleep(0.5)  # the consumer's read reconnects


async def test_a_join_while_the_layers_redis_is_down_keeps_the_socket_and_its_group(
    ws: Any, backend: str, redis_layer: RedisServer
) -> None:
    """A client's join during the outage used to raise in the consumer (its
    group_add failed) and so close the socket; now the heartbeat adds it to
    the layer group once the layer is back."""
    comm = await ws(user=1)
    await _join_while_down(comm, redis_layer)
    assert comm.future.done() is False
    await get_heartbeat().beat()
    assert await presence.agroup_send("room", {"type": "chat.message", "text": "back"}) == 1
    assert await comm.receive_json_from(timeout=5) == {"chat": "back"}


async def test_a_socket_forced_shut_while_its_last_word_runs_gets_one_close(
    ws: Any, backend: str, presence_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """presence_closing() outlasts FORCE_CLOSE_AFTER: the node closes the socket
    itself; when the hook returns, the handler must not send a second close
    (an ASGI server raises on it)."""
    from channels_presence import heartbeat
    from tests.consumers import SlowHookConsumer

    monkeypatch.setattr(heartbeat, "FORCE_CLOSE_AFTER", 0.2)
    monkeypatch.setattr(SlowHookConsumer, "hook_seconds", 0.0)
    monkeypatch.setattr(SlowHookConsumer, "closing_seconds", 1.0)
    presence_settings(LEAVE_GRACE=0)
    comm = await ws("/ws/slow/", user=1)

    assert await presence.adisconnect_user(1, code=4005) == 1
    await get_heartbeat().beat()

    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4005}
    assert await comm.receive_nothing(timeout=1.5)
    assert await presence.agroup_size("lobby") == 0


async def test_a_paused_layer_holds_a_beat_one_layer_timeout_and_the_socket_still_closes(
    ws: Any, backend: str, redis_layer: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer's Redis hangs (SIGSTOP; its client waits 15 s for a reply) while
    the store removes a socket. The beat that learns of it must not wait on the
    layer call by call (a beat held past TTL counts its node out): layer calls
    give up after LAYER_TIMEOUT, the next ones at once, and the node closes the
    socket itself, with the code asked for."""
    from channels_presence import closing

    monkeypatch.setattr(closing, "LAYER_TIMEOUT", 0.5)
    comms = [await ws(user=1), *[await ws(user=n) for n in range(2, 6)]]
    assert redis_layer.process is not None
    os.kill(redis_layer.process.pid, signal.SIGSTOP)
    try:
        for n in range(1, 6):
            await get_store().adisconnect_user(str(n), None, "kicked", 4005)
        started = time.monotonic()
        await get_heartbeat().beat()
        assert time.monotonic() - started < 2.0, "the beat waited on the hung layer"
        for comm in comms:
            closed = await comm.receive_output(timeout=FORCE_CLOSE_AFTER + 3)
            assert closed == {"type": "websocket.close", "code": 4005}
    finally:
        os.kill(redis_layer.process.pid, signal.SIGCONT)
    assert await presence.agroup_size("lobby") == 0


async def test_an_untracked_socket_hears_its_groups_again_after_the_layers_redis_restarts(
    ws: Any, backend: str, redis_layer: RedisServer
) -> None:
    """Anonymous under ANONYMOUS="ignore" (the default): presence does not count
    it, but its heartbeat still puts it back into its layer groups, which the
    restarted Redis forgot (a public page's viewers would otherwise go deaf)."""
    comm = await ws(user=None)
    await _join_while_down(comm, redis_layer)
    assert (comm.future.done(), len(get_heartbeat())) == (False, 0)
    await get_heartbeat().beat()

    await channel_layers["default"].group_send("room", {"type": "chat.message", "text": "back"})
    assert await comm.receive_json_from(timeout=5) == {"chat": "back"}
    await channel_layers["default"].group_send("lobby", {"type": "chat.message", "text": "hi"})
    assert await comm.receive_json_from(timeout=5) == {"chat": "hi"}
