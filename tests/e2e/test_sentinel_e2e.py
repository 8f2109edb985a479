"""Presence behind Redis Sentinel, across real server processes, through a real failover.

Two uvicorn servers keep presence in a django-redis cache configured with
``SentinelClient`` (one primary, one replica, three ``redis-sentinel``
processes); the channel layer has its own Redis. The primary is SIGKILLed
after the replica stopped receiving writes, so the promoted replica lacks
the last connects and joins: the servers' heartbeats write them back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import AsgiServer, Clients, Cluster, eventually
from tests.redis_sentinel import SentinelSetup

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TTL = 9.0
HEARTBEAT = 3.0
#: Seconds from the primary's death to exact counts on both servers (see
#: README, "Sentinel"): the promotion, one quick retry of the heartbeat and
#: the write-back, with slack for a shared 2-core machine.
FAILOVER_BOUND = 10.0


async def population(server: AsgiServer, group: str) -> dict[str, Any] | None:
    response = await server.aget(f"/presence/?group={group}")
    return response.json() if response.status == 200 else None


def sized(size: int, users: int) -> Callable[[Any], bool]:
    return lambda p: p is not None and p["size"] == size and p["users"] == users


async def test_a_failover_keeps_both_servers_counts_exact_and_their_sockets_open(
    start_cluster: Callable[..., Cluster],
    clients: Clients,
    fresh_sentinel_setup: SentinelSetup,
) -> None:
    setup = fresh_sentinel_setup
    a, b = await asyncio.to_thread(
        start_cluster,
        {"MAX_SESSIONS": 1, "TTL": TTL, "HEARTBEAT": HEARTBEAT},
        sentinel=setup,
    )
    alice, bob, carol, dave = [await a.alogin(n) for n in ("alice", "bob", "carol", "dave")]
    alice_a = await clients.open(a, alice)
    bob_b = await clients.open(b, bob)
    await eventually(lambda: population(a, "lobby"), sized(2, 2), timeout=3, what="lobby")
    await asyncio.to_thread(setup.wait_replicated)

    # Writes the replica will never get: a connect on b, a join on a.
    await asyncio.to_thread(setup.cut_off_replicas)
    carol_b = await clients.open(b, carol)
    await alice_a.request({"join": "room1"}, "joined")

    killed = time.monotonic()
    old = await asyncio.to_thread(setup.kill_primary)
    await asyncio.to_thread(setup.resume_replicas)
    # A login during the outage (the presence cache is not the session store).
    dave_a = await clients.open(a, dave, timeout=10)
    await asyncio.to_thread(setup.wait_for_promotion, old)
    promoted = time.monotonic() - killed

    for server in (a, b):
        await eventually(
            lambda server=server: population(server, "lobby"),  # type: ignore[misc]
            sized(4, 4),
            timeout=FAILOVER_BOUND,
            interval=0.05,
            what=f"lobby exact on {server.name}",
        )
        await eventually(
            lambda server=server: population(server, "room1"),  # type: ignore[misc]
            sized(1, 1),
            timeout=FAILOVER_BOUND,
            interval=0.05,
            what=f"room1 exact on {server.name}",
        )
    took = time.monotonic() - killed
    print(f"promotion {promoted:.2f} s; both servers exact {took:.2f} s after the primary died")
    assert took < FAILOVER_BOUND
    # Presence closed nothing, and a beat or two later nobody was counted out.
    for client in (alice_a, bob_b, carol_b, dave_a):
        assert await client.still_open_after(0.05), f"{client} was closed"
    await asyncio.sleep(HEARTBEAT)
    assert sized(4, 4)(await population(b, "lobby"))

    # Single-session enforcement on the new primary: the same user racing on both servers.
    racers = await asyncio.gather(clients.open(a, bob), clients.open(b, bob))
    await eventually(
        lambda: population(a, "lobby"), sized(4, 4), timeout=3, what="one bob after the race"
    )
    open_after = [c for c in (bob_b, *racers) if await c.still_open_after(0.5)]
    assert len(open_after) == 1, f"open after the race: {open_after}"
