"""Presence across real server processes sharing one Redis, or one Sentinel service.

Each test starts its own servers (uvicorn unless stated) with its own key
prefixes, logs users in through Django's LoginView and connects real
websocket clients. Nothing is mocked: the servers, Redis, the channel layer
and the SQLite file are the real thing. The channel layer lives on a Redis of
its own so that the presence Redis can be stopped or flushed without taking
the layer down too (see ``layer_redis_url`` in conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import AsgiServer, Client, Clients, Cluster, eventually
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

StartCluster = Callable[..., Cluster]


async def start(start_cluster: StartCluster, presence: dict[str, Any], **kwargs: Any) -> Cluster:
    """Start a cluster without blocking the event loop."""
    return await asyncio.to_thread(start_cluster, presence, **kwargs)


async def population(
    server: AsgiServer, group: str = "lobby", *, path: str = "/presence/"
) -> dict[str, Any] | None:
    """The server's view of a group (size, users, members), or None on an HTTP error."""
    response = await server.aget(f"{path}?group={group}")
    return response.json() if response.status == 200 else None


async def channels_of(server: AsgiServer, user: int) -> set[str] | None:
    """A user's live channel names as the server sees them, or None on an HTTP error."""
    response = await server.aget(f"/presence/user/{user}/")
    return set(response.json()["channels"]) if response.status == 200 else None


def sized(size: int, users: int | None = None) -> Callable[[Any], bool]:
    """A check for :func:`eventually`: the population has this size (and user count)."""
    return lambda p: p is not None and p["size"] == size and (users is None or p["users"] == users)


async def open_clients(clients: Clients, targets: list[tuple[AsgiServer, Any]]) -> list[Client]:
    """Open one client per ``(server, login)`` at once, racing each other."""
    return list(
        await asyncio.gather(
            *(
                clients.open(server, login, label=f"{login.username}@{server.name}#{i}")
                for i, (server, login) in enumerate(targets)
            )
        )
    )


async def settle(
    opened: list[Client], expected_open: int | None = None, timeout: float = 3.0
) -> list[Client]:
    """Wait until the open clients stay the same for 0.5 s (and number ``expected_open``)."""
    deadline = time.monotonic() + timeout
    while True:
        still = [c for c in opened if c.is_open]
        if expected_open is None or len(still) == expected_open:
            await asyncio.sleep(0.5)
            if [c for c in opened if c.is_open] == still:
                return still
        if time.monotonic() > deadline:
            raise AssertionError(
                f"expected {expected_open} open connections, have {len(still)}: {still}"
            )
        await asyncio.sleep(0.05)


async def layer_group(url: str, layer_prefix: str, group: str) -> set[str]:
    """The channel names in a channel-layer group (channels_redis keeps a sorted set)."""
    client = aioredis.Redis.from_url(url)
    try:
        names = await client.zrange(f"{layer_prefix}:group:{group}", 0, -1)
    finally:
        await client.aclose()
    return {n.decode() for n in names}


async def layer_inbox(url: str, layer_prefix: str, channel: str) -> list[bytes]:
    """Messages queued for a process's channels (channels_redis: one sorted set per process)."""
    process_part = channel[: channel.index("!") + 1]
    client = aioredis.Redis.from_url(url)
    try:
        return list(await client.zrange(f"{layer_prefix}{process_part}", 0, -1))
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def redis_down(server: RedisServer) -> Any:
    """Stop the presence Redis for the block; it is running again afterwards, whatever happens."""
    await asyncio.to_thread(server.stop)
    try:
        yield
    finally:
        if server.process is None:
            await asyncio.to_thread(server.start)


@pytest.fixture(params=["redis", "sentinel"])
def start_cluster(request: pytest.FixtureRequest, start_cluster: StartCluster) -> StartCluster:
    """Every test here runs with the presence cache on one Redis, then behind Sentinel
    (the session's set-up, never failed over: test_sentinel_e2e.py does that)."""
    if request.param == "redis":
        return start_cluster
    if "redis_server" in inspect.signature(request.function).parameters:
        pytest.skip("stops or restarts the plain presence Redis (see test_sentinel_e2e.py)")
    setup = request.getfixturevalue("sentinel_setup")

    def start(presence: dict[str, Any] | None = None, **kwargs: Any) -> Cluster:
        if kwargs.get("cache_backend", "django_redis") != "django_redis":
            pytest.skip("Django's own RedisCache has no Sentinel support")
        return start_cluster(presence, sentinel=setup, **kwargs)

    return start


def own_redis(redis_server: RedisServer | None) -> RedisServer:
    """The test's own redis-server; skip when REDIS_URL points at one we must not stop."""
    if redis_server is None:
        pytest.skip("REDIS_URL is set externally: this test must stop and start Redis")
    return redis_server


# -- single session across servers ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cache_backend"),
    [
        ("uvicorn", "django_redis"),
        ("uvicorn", "django"),
        (("uvicorn", "daphne"), "django_redis"),
    ],
    ids=["uvicorn-django_redis", "uvicorn-django_rediscache", "uvicorn+daphne"],
)
async def test_connecting_on_b_closes_the_older_connection_on_a_within_1s(
    start_cluster: StartCluster, clients: Clients, kind: Any, cache_backend: str
) -> None:
    """MAX_SESSIONS=1: the user's socket on server A gets presence_closing("superseded")
    and close code 4001 within 1 s of the new socket on server B being accepted; the
    new one stays open and is the user's only channel, as both servers report."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": 1}, kind=kind, cache_backend=cache_backend)
    alice = await a.alogin("alice")
    old = await clients.open(a, alice)
    assert (await population(a)) == {
        "server": "a",
        "group": "lobby",
        "size": 1,
        "users": 1,
        "members": [alice.user],
    }

    new = await clients.open(b, alice)
    accepted_at = time.monotonic()
    assert new.hello is not None, f"the new connection was refused: {new.close_code}"
    assert await old.wait_closed(1.0) == 4001
    assert old.closed_at is not None and old.closed_at - accepted_at <= 1.0
    assert {"type": "closing", "reason": "superseded", "code": 4001} in old.received
    assert await new.still_open_after(0.3)
    for server in (a, b):
        assert await channels_of(server, alice.user) == {new.channel}
        assert await population(server) == {
            "server": server.name,
            "group": "lobby",
            "size": 1,
            "users": 1,
            "members": [alice.user],
        }


async def test_reject_new_refuses_the_second_server_with_4003(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """ON_LIMIT="reject_new": the user's connection on B is accepted then closed with 4003
    (the consumer's connect() never runs, so no hello); the one on A stays and is the only
    one counted."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": 1, "ON_LIMIT": "reject_new"})
    bob = await a.alogin("bob")
    first = await clients.open(a, bob)
    second = await clients.open(b, bob)
    assert second.hello is None
    assert await second.wait_closed(2) == 4003
    assert await first.still_open_after(0.3)
    assert await channels_of(b, bob.user) == {first.channel}
    assert (await population(b))["size"] == 1


@pytest.mark.parametrize(
    ("max_sessions", "scope", "on_limit"),
    [
        (1, "user", "close_oldest"),
        (2, "user", "close_oldest"),
        (2, "session", "close_oldest"),
        (2, "user", "reject_new"),
    ],
)
async def test_racing_connects_of_one_user_leave_exactly_max_sessions(
    start_cluster: StartCluster, clients: Clients, max_sessions: int, scope: str, on_limit: str
) -> None:
    """20 connections of one user opened at once, alternating between two servers:
    once settled, exactly MAX_SESSIONS sessions hold open sockets, every closed socket
    got 4001 (close_oldest) or 4003 (reject_new), and the store's counts (group_size,
    user_channels, group_user_count) match the open sockets exactly on both servers."""
    a, b = await start(
        start_cluster, {"MAX_SESSIONS": max_sessions, "SESSION_SCOPE": scope, "ON_LIMIT": on_limit}
    )
    code = 4001 if on_limit == "close_oldest" else 4003
    # Under SESSION_SCOPE="session" each login is a session of its own.
    logins = [
        await (a if i % 2 else b).alogin("carol") for i in range(4 if scope == "session" else 1)
    ]
    targets = [((a, b)[i % 2], logins[i % len(logins)]) for i in range(20)]
    opened = await open_clients(clients, targets)
    assert all(c.hello is not None or c.close_code == code for c in opened), opened

    if scope == "user":
        survivors = await settle(opened, max_sessions)
    else:
        # A surviving session may hold several sockets: count sessions, not sockets.
        survivors = await settle(opened)
        sessions = {c.hello["session"] for c in survivors if c.hello}
        assert len(sessions) == max_sessions, f"{len(sessions)} sessions survive: {survivors}"

    for client in opened:
        if client not in survivors:
            assert await client.wait_closed(2) == code, client
    live = {c.channel for c in survivors}
    for server in (a, b):
        assert await channels_of(server, logins[0].user) == live
        assert await population(server) == {
            "server": server.name,
            "group": "lobby",
            "size": len(live),
            "users": 1,
            "members": [logins[0].user],
        }


# -- populations across servers --------------------------------------------------------


async def test_join_and_leave_on_either_server_show_in_both_populations(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """presence_join/presence_leave by client command on A and B: both servers report the
    same group_size, group_user_count, members and group_sizes, through the sync API in
    a view and the async API in an async view; a closed socket leaves its groups."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": None})
    alice, bob = await a.alogin("alice"), await b.alogin("bob")
    alice_a = await clients.open(a, alice)
    alice_b = await clients.open(b, alice)
    bob_b = await clients.open(b, bob)
    for client in (alice_a, alice_b, bob_b):
        await client.request({"join": "room1"}, "joined")

    for server in (a, b):
        for path in ("/presence/", "/apresence/"):
            room = await population(server, "room1", path=path)
            assert room == {
                "server": server.name,
                "group": "room1",
                "size": 3,
                "users": 2,
                "members": sorted([alice.user, bob.user]),
            }, path
        sizes = await server.aget_json("/presence/sizes/?group=lobby&group=room1&group=x")
        assert sizes == {"sizes": {"lobby": 3, "room1": 3, "x": 0}}

    assert (await b.apost_json("/presence/send/", {"group": "room1", "text": "hi"}))["result"] == 3
    for client in (alice_a, alice_b, bob_b):
        assert (await client.expect("message"))["text"] == "hi"

    await alice_a.request({"leave": "room1"}, "left")
    assert await population(b, "room1") == {
        "server": "b",
        "group": "room1",
        "size": 2,
        "users": 2,
        "members": sorted([alice.user, bob.user]),
    }
    assert (await population(b, "lobby"))["size"] == 3

    await bob_b.close()
    room, _ = await eventually(
        lambda: population(a, "room1"), sized(1, 1), timeout=2, what="bob's close counted"
    )
    assert room["members"] == [alice.user]
    assert (await population(a, "lobby"))["size"] == 2


async def test_disconnect_user_in_a_view_on_a_closes_the_users_sockets_on_b(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """disconnect_user() called by an HTTP view on server A closes every socket of the
    user on server B with 4001 after presence_closing("kicked"); other users' sockets
    stay open, and the user is offline everywhere at once."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": 2})
    dave, bob = await b.alogin("dave"), await b.alogin("bob")
    dave_1 = await clients.open(b, dave)
    dave_2 = await clients.open(b, dave)
    bystander = await clients.open(b, bob)

    reply = await a.apost_json(f"/presence/disconnect/{dave.user}/")
    assert reply == {"server": "a", "result": 2}
    for client in (dave_1, dave_2):
        assert await client.wait_closed(2) == 4001
        assert {"type": "closing", "reason": "kicked", "code": 4001} in client.received
    assert await bystander.still_open_after(0.3)
    presence = await a.aget_json(f"/presence/user/{dave.user}/")
    assert presence == {"server": "a", "user": dave.user, "channels": [], "online": False}
    assert (await population(a)) == {
        "server": "a",
        "group": "lobby",
        "size": 1,
        "users": 1,
        "members": [bob.user],
    }


# -- crashes and outages ----------------------------------------------------------------


async def test_sigkilled_servers_connections_stop_counting_within_ttl(
    start_cluster: StartCluster, clients: Clients, layer_redis_url: str
) -> None:
    """TTL=2: after SIGKILL of server A (no cleanup runs), A's connections leave the
    counts read on B within TTL, and after B's next heartbeat they are out of the
    channel-layer group, so group_send addresses only B's live connection: its return
    value counts 1, B's client gets the message, nothing is queued for A's channels."""
    ttl = 2.0
    a, b = await start(start_cluster, {"MAX_SESSIONS": None, "TTL": ttl})
    alice, bob = await a.alogin("alice"), await a.alogin("bob")
    dead = [await clients.open(a, alice), await clients.open(a, alice), await clients.open(a, bob)]
    carol = await b.alogin("carol")
    survivor = await clients.open(b, carol)
    assert (await population(b)) == {
        "server": "b",
        "group": "lobby",
        "size": 4,
        "users": 3,
        "members": sorted([alice.user, bob.user, carol.user]),
    }
    dead_channels = {c.channel for c in dead}
    prefix = a.config.layer_prefix
    assert dead_channels <= await layer_group(layer_redis_url, prefix, "lobby")

    a.kill()
    killed_at = time.monotonic()
    for client in dead:
        assert await client.wait_closed(2) == 1006
    lobby, _ = await eventually(
        lambda: population(b),
        sized(1, 1),
        timeout=ttl + 1.0,
        interval=0.05,
        what="A's connections expired",
    )
    elapsed = time.monotonic() - killed_at
    assert elapsed <= ttl + 0.5, f"A's connections still counted {elapsed:.2f}s after SIGKILL"
    assert lobby["members"] == [carol.user]
    assert (await b.aget_json(f"/presence/user/{alice.user}/"))["online"] is False

    heartbeat = ttl / 3
    await eventually(
        lambda: layer_group(layer_redis_url, prefix, "lobby"),
        lambda names: not (names & dead_channels),
        timeout=2 * heartbeat + 1.0,
        what="dead channels discarded from the layer group",
    )
    reply = await b.apost_json("/presence/send/", {"group": "lobby", "text": "after the crash"})
    assert reply["result"] == 1
    assert (await survivor.expect("message"))["text"] == "after the crash"
    queued = await layer_inbox(layer_redis_url, prefix, next(iter(dead_channels)))
    assert not [m for m in queued if b"after the crash" in m]


async def test_counts_recover_within_one_heartbeat_after_redis_restarts_empty(
    start_cluster: StartCluster, clients: Clients, redis_server: RedisServer | None
) -> None:
    """The presence Redis restarts with no keys: within one HEARTBEAT (plus request
    slack) the servers' heartbeats write their live connections back, counts and groups
    are right again, and single-session enforcement works on the restored entries."""
    server = own_redis(redis_server)
    ttl = 3.0
    heartbeat = ttl / 3
    a, b = await start(start_cluster, {"MAX_SESSIONS": 1, "TTL": ttl})
    alice, bob = await a.alogin("alice"), await b.alogin("bob")
    alice_a = await clients.open(a, alice)
    bob_b = await clients.open(b, bob)
    await alice_a.request({"join": "room1"}, "joined")

    await asyncio.to_thread(server.restart)
    restarted_at = time.monotonic()
    await eventually(
        lambda: population(b),
        sized(2, 2),
        timeout=heartbeat + 2.0,
        interval=0.05,
        what="lobby restored",
    )
    elapsed = time.monotonic() - restarted_at
    assert elapsed <= heartbeat + 0.75, f"counts took {elapsed:.2f}s (HEARTBEAT={heartbeat}s)"
    await eventually(
        lambda: population(b, "room1"), sized(1, 1), timeout=heartbeat + 1.0, what="room1 restored"
    )
    assert await channels_of(a, bob.user) == {bob_b.channel}

    alice_b = await clients.open(b, alice)
    assert await alice_a.wait_closed(1.0) == 4001
    assert await channels_of(a, alice.user) == {alice_b.channel}
    assert await alice_b.still_open_after(0.2)
    assert await bob_b.still_open_after(0.1)


async def test_redis_down_with_on_store_error_allow_connects_untracked_then_tracks(
    start_cluster: StartCluster, clients: Clients, redis_server: RedisServer | None
) -> None:
    """ON_STORE_ERROR="allow": with the presence Redis down a new connection is accepted
    and works (echo); once Redis is back, heartbeats write it and the older connection in,
    so both count again, and the late one is subject to single-session enforcement."""
    server = own_redis(redis_server)
    ttl = 3.0
    heartbeat = ttl / 3
    a, b = await start(start_cluster, {"MAX_SESSIONS": 1, "TTL": ttl, "ON_STORE_ERROR": "allow"})
    alice, bob = await a.alogin("alice"), await b.alogin("bob")
    alice_a = await clients.open(a, alice)

    async with redis_down(server):
        started = time.monotonic()
        bob_b = await clients.open(b, bob, timeout=10)
        took = time.monotonic() - started
        assert bob_b.hello is not None, f"refused with {bob_b.close_code}"
        assert took < 3.0, f"connecting with Redis down took {took:.2f}s"
        assert (await bob_b.request({"echo": "untracked"}, "echo"))["echo"] == "untracked"
        assert (await b.aget("/presence/?group=lobby")).status == 500
    await eventually(
        lambda: population(a),
        sized(2, 2),
        timeout=heartbeat + 2.0,
        what="both connections tracked after Redis returned",
    )
    assert await channels_of(a, bob.user) == {bob_b.channel}

    bob_a = await clients.open(a, bob)
    assert await bob_b.wait_closed(1.0) == 4001
    assert await channels_of(b, bob.user) == {bob_a.channel}
    assert await alice_a.still_open_after(0.1)


async def test_redis_down_with_on_store_error_reject_closes_with_1011_then_tracks(
    start_cluster: StartCluster, clients: Clients, redis_server: RedisServer | None
) -> None:
    """ON_STORE_ERROR="reject": with the presence Redis down a new connection is accepted
    and closed with 1011 (no hello), the open one is left alone; once Redis is back new
    connections are accepted and counted, and the older one is written back too."""
    server = own_redis(redis_server)
    ttl = 3.0
    heartbeat = ttl / 3
    a, b = await start(start_cluster, {"TTL": ttl, "ON_STORE_ERROR": "reject"})
    alice, bob = await a.alogin("alice"), await b.alogin("bob")
    alice_a = await clients.open(a, alice)

    async with redis_down(server):
        refused = await clients.open(b, bob, timeout=10)
        assert refused.hello is None
        assert await refused.wait_closed(5) == 1011
        assert await alice_a.still_open_after(0.2)

    bob_b = await clients.open(b, bob)
    assert bob_b.hello is not None, f"refused with {bob_b.close_code} after Redis returned"
    await eventually(
        lambda: population(a),
        sized(2, 2),
        timeout=heartbeat + 2.0,
        what="both connections counted after Redis returned",
    )
    assert await channels_of(a, alice.user) == {alice_a.channel}
    assert await channels_of(a, bob.user) == {bob_b.channel}


async def test_logging_out_on_a_closes_every_socket_of_the_user_on_every_server(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """DISCONNECT_ON_LOGOUT (default True): a POST to Django's LogoutView on server A closes
    every socket of that user, on A and on B (presence_closing("logged_out"), LOGOUT_CODE
    4002); another user stays connected."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": None})
    laptop, phone, dave = await a.alogin("carol"), await b.alogin("carol"), await a.alogin("dave")
    laptop_a = await clients.open(a, laptop, label="laptop-a")
    laptop_b = await clients.open(b, laptop, label="laptop-b")
    phone_b = await clients.open(b, phone, label="phone")
    dave_b = await clients.open(b, dave)
    await a.alogout(laptop)
    for sock in (laptop_a, laptop_b, phone_b):
        assert await sock.wait_closed(2) == 4002
        assert {"type": "closing", "reason": "logged_out", "code": 4002} in sock.received
    assert await dave_b.still_open_after(0.2)
    assert await channels_of(a, laptop.user) == set()


async def test_logout_with_session_scope_closes_only_that_sessions_sockets(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """DISCONNECT_ON_LOGOUT="session": the logged-out session's sockets close on every
    server with 4002; the same user's other session and another user stay connected."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": None, "DISCONNECT_ON_LOGOUT": "session"})
    laptop, phone, dave = await a.alogin("carol"), await b.alogin("carol"), await a.alogin("dave")
    laptop_b = await clients.open(b, laptop, label="laptop")
    phone_b = await clients.open(b, phone, label="phone")
    dave_b = await clients.open(b, dave)
    await a.alogout(laptop)
    assert await laptop_b.wait_closed(2) == 4002
    assert {"type": "closing", "reason": "logged_out", "code": 4002} in laptop_b.received
    assert await phone_b.still_open_after(0.2)
    assert dave_b.is_open
    assert await channels_of(a, laptop.user) == {phone_b.channel}


async def test_anonymous_connections_count_as_connections_not_users(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """ANONYMOUS="track": anonymous sockets on both servers count in group_size but not in
    group_user_count or group_members; under "ignore" (the default) they count nowhere."""
    a, b = await start(start_cluster, {"ANONYMOUS": "track"})
    alice = await a.alogin("alice")
    await clients.open(a)
    await clients.open(b)
    await clients.open(b, alice)
    for server in (a, b):
        assert await population(server) == {
            "server": server.name,
            "group": "lobby",
            "size": 3,
            "users": 1,
            "members": [alice.user],
        }

    c, d = await start(start_cluster, {}, names=("c", "d"))
    anonymous = await clients.open(c)
    assert anonymous.hello is not None
    assert await population(d) == {
        "server": "d",
        "group": "lobby",
        "size": 0,
        "users": 0,
        "members": [],
    }


async def test_user_of_a_crashed_server_reconnects_elsewhere_at_once(
    start_cluster: StartCluster, clients: Clients
) -> None:
    """MAX_SESSIONS=1, close_oldest: right after server A is SIGKILLed (its entry not yet
    expired) the user reconnects on B and is accepted; the dead entry is evicted, so the
    user counts once at once; A restarted serves presence again."""
    a, b = await start(start_cluster, {"MAX_SESSIONS": 1, "TTL": 30})
    bob = await a.alogin("bob")
    on_a = await clients.open(a, bob)
    a.kill()
    assert await on_a.wait_closed(2) == 1006
    on_b = await clients.open(b, bob)
    assert on_b.hello is not None
    assert await channels_of(b, bob.user) == {on_b.channel}
    assert (await population(b))["size"] == 1

    await asyncio.to_thread(a.start)
    again = await clients.open(a, bob)
    assert await on_b.wait_closed(1.0) == 4001
    assert await channels_of(a, bob.user) == {again.channel}


async def test_single_session_is_enforced_again_after_an_outage_under_allow(
    start_cluster: StartCluster, clients: Clients, redis_server: RedisServer | None
) -> None:
    """MAX_SESSIONS=1, ON_STORE_ERROR="allow": the user keeps a socket on A, and opens
    one on B while the presence Redis is down (allowed, untracked). Once Redis is back and
    the heartbeats have written both in, the limit holds again: the newer socket (B) stays,
    the older (A) is closed with 4001, and the user has one channel."""
    server = own_redis(redis_server)
    ttl = 3.0
    heartbeat = ttl / 3
    a, b = await start(start_cluster, {"MAX_SESSIONS": 1, "TTL": ttl, "ON_STORE_ERROR": "allow"})
    alice = await a.alogin("alice")
    older = await clients.open(a, alice)
    async with redis_down(server):
        newer = await clients.open(b, alice, timeout=10)
        assert newer.hello is not None
    await asyncio.sleep(2 * heartbeat + 0.5)
    channels = await channels_of(a, alice.user)
    assert channels is not None and len(channels) == 1, (
        f"MAX_SESSIONS=1 but alice has {len(channels or ())} live channels after the outage: "
        f"A open={older.is_open}, B open={newer.is_open}"
    )
    assert channels == {newer.channel}
    assert older.close_code == 4001


async def test_close_oldest_still_closes_the_oldest_after_redis_restarts_empty(
    start_cluster: StartCluster, clients: Clients, redis_server: RedisServer | None
) -> None:
    """MAX_SESSIONS=2: a user's older socket is on server A, the newer on B. The presence
    Redis restarts empty just after A's heartbeat, so B's heartbeat writes the newer
    socket back before A's writes the older. A third socket must still close the OLDER
    one (4001) and leave the newer open, and user_channels must list them oldest first:
    restoring must keep each connection's connect time, not stamp the restore time."""
    server = own_redis(redis_server)
    ttl = 3.0
    heartbeat = ttl / 3
    a, b = await start(start_cluster, {"MAX_SESSIONS": 2, "TTL": ttl})
    alice = await a.alogin("alice")
    # A's heartbeat starts with its first socket, B's half a period later.
    older = await clients.open(a, alice, label="older@a")
    t0 = time.monotonic()
    await asyncio.sleep(heartbeat / 2)
    newer = await clients.open(b, alice, label="newer@b")
    assert await channels_of(a, alice.user) == {older.channel, newer.channel}

    await asyncio.sleep(t0 + 2 * heartbeat + 0.1 - time.monotonic())
    await asyncio.to_thread(server.restart)
    assert time.monotonic() - t0 < 2.4 * heartbeat, "Redis restart too slow for the test"
    await eventually(
        lambda: a.aget_json(f"/presence/user/{alice.user}/"),
        lambda p: len(p["channels"]) == 2,
        timeout=ttl,
        what="both restored",
    )
    listed = (await a.aget_json(f"/presence/user/{alice.user}/"))["channels"]
    third = await clients.open(a, alice, label="third@a")
    assert third.hello is not None
    await asyncio.gather(older.still_open_after(0.7), newer.still_open_after(0.7))
    assert (older.close_code, newer.close_code) == (4001, None), (
        f"{third.label} should close {older.label}, not {newer.label}: "
        f"close codes older={older.close_code}, newer={newer.close_code}"
    )
    assert listed == [older.channel, newer.channel], "user_channels is not oldest first"
