"""Closes that land, ghosts that go, sends and sockets that survive an outage.

Real stores, real channel layers and real Redis servers (the test's own,
stopped, paused and restarted as the fault needs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

import channels_presence as presence
from channels_presence import listeners
from channels_presence.consumers import is_outage
from channels_presence.exceptions import TooManyGroups
from channels_presence.heartbeat import FORCE_CLOSE_AFTER, get_heartbeat
from channels_presence.logs import store_failures
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection
from channels_presence.stores.redis import RedisStore
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
