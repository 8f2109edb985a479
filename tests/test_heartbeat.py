"""The heartbeat: connections that expired are closed with 1001 ("going away"), not CLOSE_CODE.

A client told 4001 believes it signed in elsewhere and stays away; one told
1001 reconnects. Both ways a connection expires are pinned here: this node was
counted out (its loop stalled past TTL), and another node's connections were
reaped after that node died.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.test import Client

import channels_presence as presence
from channels_presence.closing import CLOSE_MESSAGE_TYPE, EXPIRED_CLOSE_CODE
from channels_presence.conf import get_settings
from channels_presence.heartbeat import _base36, get_heartbeat
from channels_presence.logs import store_failures
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, SessionPolicy
from tests.test_consumers import closed_with, still_open

pytestmark = pytest.mark.usefixtures("backend")


def stall(heartbeat: Any) -> None:
    """Stop this loop's heartbeat task, as a blocked event loop would."""
    assert heartbeat._task is not None
    heartbeat._task.cancel()


async def test_a_counted_out_nodes_sockets_are_closed_with_1001(
    ws: Any, presence_settings: Any, caplog: Any
) -> None:
    presence_settings(TTL=1, LEAVE_GRACE=0, CLOSE_CODE=4100)
    comm = await ws(user=1)
    heartbeat = get_heartbeat()
    stalled_node = heartbeat.node
    stall(heartbeat)
    await asyncio.sleep(1.1)
    # Another server's heartbeat counts the stalled node out and reaps its connection.
    reaped = await get_store().arefresh("peer")
    assert [d.connection.user for d in reaped.expired] == ["1"]

    result = await heartbeat.beat()

    assert result is not None and result.counted_out
    assert await closed_with(comm, EXPIRED_CLOSE_CODE) == [
        {"type": "session.superseded", "reason": "expired", "code": 1001}
    ]
    # It carries on as a new node, with ids of its own.
    assert heartbeat.node != stalled_node and re.fullmatch(r"[A-Za-z0-9]{8}", heartbeat.node)
    assert len(heartbeat) == 0
    assert "counted out; closing its 1 connection(s) so they reconnect" in caplog.text


async def test_a_connect_on_a_counted_out_node_closes_its_older_sockets_with_1001(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(TTL=1, LEAVE_GRACE=0, MAX_SESSIONS=None)
    stale = await ws(user=1)
    stall(get_heartbeat())
    await asyncio.sleep(1.1)
    await get_store().arefresh("peer")

    # This loop's next connect learns it was counted out before its heartbeat does.
    fresh = await ws(user=2)

    assert await closed_with(stale, EXPIRED_CLOSE_CODE) != []
    assert await presence.agroup_members("lobby") == [2]
    await fresh.send_json_to({"ping": 1})
    assert await fresh.receive_json_from() == {"echo": {"ping": 1}}


async def test_connects_racing_on_a_counted_out_node_move_to_one_new_node_and_stay(
    ws: Any, presence_settings: Any
) -> None:
    """Both learn the node was counted out; the second must not count out the
    new node the first moved to (its socket would expire while it is live)."""
    presence_settings(TTL=1, LEAVE_GRACE=0, MAX_SESSIONS=None)
    heartbeat = get_heartbeat()
    stale = await ws(user=1)
    stall(heartbeat)
    await asyncio.sleep(1.1)
    await get_store().arefresh("peer")

    first, second = await asyncio.gather(ws(user=2), ws(user=3))

    assert await closed_with(stale, EXPIRED_CLOSE_CODE) != []
    await asyncio.sleep(1.1)  # past TTL: a node nobody beats would be reaped now
    await heartbeat.beat()
    await get_store().arefresh("peer")
    assert await presence.agroup_members("lobby") == [2, 3]
    for comm in (first, second):
        await still_open(comm)


async def test_a_dead_nodes_connections_are_told_to_close_with_1001(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(TTL=1, LEAVE_GRACE=0, CLOSE_CODE=4100)
    layer = get_channel_layer()
    ghost_channel = await layer.new_channel()
    ghost = Connection(ghost_channel, user="42", session=None, groups=(), conn_id="deadnode.1")
    await get_store().aconnect(ghost, SessionPolicy(max_sessions=None))
    # A live connection here: this loop's heartbeat reaps the dead node after its TTL.
    await ws(user=1)
    await asyncio.sleep(1.1)
    await get_heartbeat().beat()

    assert await presence.agroup_size("lobby") == 1
    assert not await presence.ais_online(42)
    message = await asyncio.wait_for(layer.receive(ghost_channel), timeout=2)
    assert message == {"type": CLOSE_MESSAGE_TYPE, "code": 1001, "reason": "expired"}


# The store lost this node ---------------------------------------------------------------


@pytest.fixture
def wipe(request: pytest.FixtureRequest, backend: str) -> Callable[[], None]:
    """Lose everything the store holds, as a Redis flush or restart would."""

    def wipe() -> None:
        if backend == "local":
            get_store().cache.clear()  # type: ignore[attr-defined]
            return
        import redis

        prefix = get_settings().KEY_PREFIX
        with redis.Redis.from_url(request.getfixturevalue("redis_url")) as client:
            client.delete(*client.scan_iter(match=f"{prefix}/*", count=1000))

    return wipe


async def test_a_lost_node_writes_its_connections_back(
    ws: Any, presence_settings: Any, wipe: Callable[[], None], caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="channels_presence")
    presence_settings(MAX_SESSIONS=None)
    alice = await ws(user=1, session="s1")
    await alice.send_json_to({"join": "room-9"})
    await alice.receive_json_from()
    await ws(user=2)
    await ws(user=2)
    staged = await ws("/ws/diff/", user=3)
    await staged.send_json_to({"meta": {"device": "phone"}})
    assert await staged.receive_json_from() == {"meta": "ok"}
    before = {pk: await presence.auser_connections(pk) for pk in (1, 2, 3)}
    assert before[3][0].meta == {"device": "phone"}

    wipe()
    assert await presence.agroups() == {}
    await get_heartbeat().beat()

    assert await presence.agroups() == {"lobby": 3, "room-9": 1, "stage": 1}
    assert await presence.agroup_members("lobby") == [1, 2]
    # Written back as they were: channels, sessions, groups, metadata, connect times.
    assert {pk: await presence.auser_connections(pk) for pk in (1, 2, 3)} == before
    assert "wrote back 4 missing connection(s)" in caplog.text
    await still_open(alice)


async def test_a_connection_whose_place_was_taken_meanwhile_is_closed_not_written_back(
    ws: Any, presence_settings: Any, wipe: Callable[[], None]
) -> None:
    presence_settings(CLOSE_CODE=4100)
    mine = await ws(user=1)
    kept = await ws(user=2)
    wipe()
    # While the store knew nothing of it, user 1 connected on another server.
    elsewhere = Connection(
        "specific.other!1", user="1", session=None, groups=("lobby",), conn_id="othernode.1"
    )
    assert (await get_store().aconnect(elsewhere, SessionPolicy(max_sessions=1))).accepted

    await get_heartbeat().beat()

    assert await closed_with(mine, 4100) == [
        {"type": "session.superseded", "reason": "superseded", "code": 4100}
    ]
    assert await presence.auser_channels(1) == ["specific.other!1"]
    assert await presence.agroup_members("lobby") == [1, 2]
    assert len(get_heartbeat()) == 1
    await still_open(kept)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("on_logout", [True, "session"])
async def test_a_logout_while_the_store_was_lost_closes_the_socket_instead_of_writing_it_back(
    ws: Any, presence_settings: Any, wipe: Callable[[], None], on_logout: Any
) -> None:
    """The logout found nothing to close in the emptied store: only its fence
    tells the next beat not to write the socket back, but to close it."""
    presence_settings(MAX_SESSIONS=None, DISCONNECT_ON_LOGOUT=on_logout)
    user = await sync_to_async(get_user_model().objects.create_user)("el", password="pw")
    browser = Client()
    await sync_to_async(browser.force_login)(user)
    mine = await ws(user=user.pk, session=browser.session.session_key)
    other = await ws(user=user.pk + 1000)
    wipe()
    await sync_to_async(browser.logout)()

    await get_heartbeat().beat()

    assert await closed_with(mine, 4002) == [
        {"type": "session.superseded", "reason": "logged_out", "code": 4002}
    ]
    assert not await presence.ais_online(user.pk)
    assert await presence.agroup_members("lobby") == [user.pk + 1000]
    await still_open(other)


# Removed elsewhere -------------------------------------------------------------------------


async def test_a_connection_removed_elsewhere_is_closed_by_the_next_beat(
    ws: Any, presence_settings: Any
) -> None:
    """Its close message was lost: the heartbeat closes it, with the code asked for."""
    presence_settings(LEAVE_GRACE=0)
    comm = await ws(user=1)
    other = await ws(user=2)
    # The store removes it, as another server's disconnect_user would; no message is sent.
    [gone] = await get_store().adisconnect_user("1", None, "kicked", 4005)
    assert gone.connection.user == "1" and len(get_heartbeat()) == 2

    await get_heartbeat().beat()

    assert await closed_with(comm, 4005) == [
        {"type": "session.superseded", "reason": "kicked", "code": 4005}
    ]
    assert len(get_heartbeat()) == 1
    await still_open(other)


def _hold_redis(url: str, seconds: float) -> None:
    """Keep Redis busy (one script) for ``seconds``: its other clients wait."""
    spin = (
        "local t = redis.call('TIME') local start = t[1] + t[2] / 1e6 "
        "repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 - start >= tonumber(ARGV[1])"
    )
    with redis.Redis.from_url(url) as admin:
        admin.eval(spin, 0, seconds)


@pytest.mark.redis
async def test_notices_of_a_beat_whose_reply_was_lost_are_handed_over_again(
    ws: Any, key_prefix: str
) -> None:
    """A paused Redis runs the beat's script after the client gave up on it
    (its reply goes nowhere): the removal it carried must come again."""
    from django.test import override_settings

    from tests.redis_server import RedisServer, find_redis_server

    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = RedisServer(binary)
    server.start()
    cache = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": server.url,
        "OPTIONS": {"SOCKET_TIMEOUT": 0.3},
    }
    settings = {"KEY_PREFIX": key_prefix, "LEAVE_GRACE": 0}
    try:
        with override_settings(CACHES={"default": cache}, CHANNELS_PRESENCE=settings):
            comm = await ws(user=1)
            # Removed with no message sent, as another server's disconnect_user
            # whose layer send was lost.
            await get_store().adisconnect_user("1", None, "kicked", 4005)
            # Redis is busy for 0.6 s: the beat's call waits in its socket,
            # the client gives up at 0.3 s, and Redis runs it afterwards.
            busy = asyncio.ensure_future(asyncio.to_thread(_hold_redis, server.url, 0.6))
            await asyncio.sleep(0.05)
            assert await get_heartbeat().beat() is None
            await busy

            await get_heartbeat().beat()

            assert await closed_with(comm, 4005) == [
                {"type": "session.superseded", "reason": "kicked", "code": 4005}
            ]
    finally:
        server.close()
        store_failures.failures = 0


# Admitted while the store was down ---------------------------------------------------------


@pytest.fixture
def flaky_redis(key_prefix: str) -> Any:
    """A Redis of this test's own, to stop and start again."""
    from django.test import override_settings

    from tests.redis_server import RedisServer, find_redis_server

    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = RedisServer(binary)
    server.start()
    caches = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.url}}
    with override_settings(CACHES=caches, CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix}):
        yield server
    server.close()


@pytest.mark.redis
async def test_a_connection_let_in_while_the_store_was_down_is_recorded_once_it_is_back(
    ws: Any, flaky_redis: Any
) -> None:
    flaky_redis.stop()
    comm = await ws(user=1)  # ON_STORE_ERROR="allow": in, untracked for now
    flaky_redis.start()
    assert await presence.agroup_size("lobby") == 0

    await get_heartbeat().beat()

    assert await presence.agroup_members("lobby") == [1]
    assert [t.recorded for t in get_heartbeat().trackers.values()] == [True]
    await still_open(comm)


@pytest.mark.redis
async def test_one_let_in_while_the_store_was_down_is_refused_past_the_limit_when_it_is_back(
    ws: Any, flaky_redis: Any, presence_settings: Any
) -> None:
    presence_settings(ON_LIMIT="reject_new", REJECT_CODE=4300)
    flaky_redis.stop()
    late = await ws(user=1)
    flaky_redis.start()
    # Meanwhile the user connected on another server, which the store recorded.
    elsewhere = Connection(
        "specific.other!1", user="1", session=None, groups=("lobby",), conn_id="othernode.1"
    )
    assert (await get_store().aconnect(elsewhere, SessionPolicy(max_sessions=1))).accepted

    await get_heartbeat().beat()

    assert await closed_with(late, 4300) == [
        {"type": "session.superseded", "reason": "rejected", "code": 4300}
    ]
    assert await presence.auser_channels(1) == ["specific.other!1"]


@pytest.mark.redis
async def test_one_let_in_while_the_store_was_down_whose_user_logged_out_is_closed_as_logged_out(
    ws: Any, flaky_redis: Any
) -> None:
    flaky_redis.stop()
    late = await ws(user=1, session="s1")
    flaky_redis.start()
    # The logout found nothing recorded to close; its fence is all it left.
    await get_store().afence("1", "s1")

    await get_heartbeat().beat()

    assert await closed_with(late, 4002) == [
        {"type": "session.superseded", "reason": "logged_out", "code": 4002}
    ]
    assert await presence.auser_channels(1) == []
    assert len(get_heartbeat()) == 0


# The heartbeat task ----------------------------------------------------------------------


async def test_the_task_keeps_a_node_alive_then_retires_once_idle(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(TTL=2, LEAVE_GRACE=0)  # a beat every 2/3 s
    comm = await ws(user=1)
    heartbeat = get_heartbeat()
    task = heartbeat._task
    assert task is not None
    await asyncio.sleep(2.5)  # past TTL: only the task's beats keep it listed
    assert len(await presence.auser_connections(1)) == 1

    await comm.disconnect()
    # It outlives the last connection by TTL + LEAVE_GRACE (and a beat), then retires.
    await asyncio.sleep(0.5)
    assert not task.done()
    await asyncio.wait_for(task, timeout=8)
    assert heartbeat._task is None

    # A new connection starts it again.
    await ws(user=2)
    assert heartbeat._task is not None and not heartbeat._task.done()
    assert await presence.agroup_members("lobby") == [2]


def test_connection_ids_count_in_base_36() -> None:
    assert [_base36(n) for n in (0, 9, 10, 35, 36, 1295, 1296)] == [
        "0", "9", "a", "z", "10", "zz", "100"
    ]  # fmt: skip
