"""Two real ASGI servers with presence on a real three-primary Redis Cluster.

The same e2e project as ``test_cross_process.py``, its presence cache pointed
at a node of the cluster with ``REDIS_CLUSTER = True``; the channel layer
keeps a standalone Redis of its own (channels_redis has no cluster client).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.harness import Clients, eventually
from tests.e2e.test_cross_process import (
    StartCluster,
    channels_of,
    open_clients,
    population,
    settle,
    sized,
)
from tests.redis_cluster import RedisCluster

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


async def test_one_user_racing_on_two_servers_keeps_one_session_on_a_cluster(
    start_cluster: StartCluster, clients: Clients, redis_cluster: RedisCluster
) -> None:
    """20 sockets of one user opened at once on two servers: one survives, the
    others close with 4001, and both servers count exactly the survivor."""
    a, b = await asyncio.to_thread(
        start_cluster,
        {"MAX_SESSIONS": 1, "REDIS_CLUSTER": True},
        presence_url=redis_cluster.url,
    )
    login = await a.alogin("carol")
    opened = await open_clients(clients, [((a, b)[i % 2], login) for i in range(20)])
    [survivor] = await settle(opened, 1, timeout=6)
    for client in opened:
        if client is not survivor:
            assert await client.wait_closed(3) == 4001, client
    for server in (a, b):
        assert await channels_of(server, login.user) == {survivor.channel}
        assert await population(server) == {
            "server": server.name,
            "group": "lobby",
            "size": 1,
            "users": 1,
            "members": [login.user],
        }


async def test_joins_on_either_server_count_once_on_a_cluster(
    start_cluster: StartCluster, clients: Clients, redis_cluster: RedisCluster
) -> None:
    a, b = await asyncio.to_thread(
        start_cluster,
        {"MAX_SESSIONS": None, "REDIS_CLUSTER": True},
        presence_url=redis_cluster.url,
    )
    alice, bob = await a.alogin("alice"), await b.alogin("bob")
    alice_a = await clients.open(a, alice)
    bob_b = await clients.open(b, bob)
    for client in (alice_a, bob_b):
        await client.request({"join": "room1"}, "joined")
    for server in (a, b):
        assert (await population(server, "room1"))["size"] == 2
        sizes = await server.aget_json("/presence/sizes/?group=lobby&group=room1&group=x")
        assert sizes == {"sizes": {"lobby": 2, "room1": 2, "x": 0}}
    await bob_b.close()
    room, _ = await eventually(
        lambda: population(a, "room1"), sized(1, 1), timeout=3, what="bob's close counted"
    )
    assert room["members"] == [alice.user]
