"""A hot sender on one server, its first listener on another: the ``max_age`` bound.

Server A runs a task that calls ``agroup_send`` every 10 ms with the servers'
``LISTENERS_MAX_AGE`` (see ``project/hot_sender.py``), and an async view
waiting in ``await_for_listeners``. A real browser-like client on server B
joins the group and leaves it again. Both servers, Redis (presence and the
channel layer apart) and the clients are real; the clocks compared are one
machine's ``time.time()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import Clients, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MAX_AGE = 0.5
#: What the bound may be exceeded by on a shared 2-core machine: the sender's
#: tick, the read itself, the layer's delivery and a busy event loop.
SLACK = 0.75
TICK = 0.01


async def evalsha_calls(redis_url: str) -> int:
    """Presence scripts Redis has run so far (every presence read is one)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_first_listener_on_another_server_gets_messages_within_max_age(
    start_cluster: Callable[..., Cluster], clients: Clients, redis_url: str
) -> None:
    """A listener joining on B receives A's messages at most MAX_AGE (+ slack) after
    its join; A's waiter wakes as soon; while nobody listens the sender reads Redis
    at most once per MAX_AGE however often it ticks; after the listener leaves, A
    stops calling the layer within MAX_AGE (+ slack)."""
    a, b = await asyncio.to_thread(
        start_cluster, {"LISTENERS_MAX_AGE": MAX_AGE, "MAX_SESSIONS": None}
    )
    alice = await b.alogin("alice")
    listener = await clients.open(b, alice)

    reads_before = await evalsha_calls(redis_url)
    idle_since = time.monotonic()
    await a.aget_json(f"/hot-sender/?group=ticker&start={TICK}")
    waiting = asyncio.ensure_future(a.aget_json("/await-listeners/?group=ticker&timeout=8"))
    await asyncio.sleep(1.5)
    idle = await a.aget_json("/hot-sender/?group=ticker")
    reads = await evalsha_calls(redis_url) - reads_before
    elapsed = time.monotonic() - idle_since
    assert idle["figures"]["sent"] == 0
    assert idle["figures"]["checks"] >= 20, idle
    # One read per MAX_AGE (the waiter shares the sender's), and a heartbeat or two.
    assert reads <= elapsed / MAX_AGE + 3, (reads, elapsed, idle)
    assert not waiting.done()

    await listener.request({"join": "ticker"}, "joined")
    joined_at = time.time()
    first = await listener.expect("message", timeout=5)
    first_at = time.time()
    assert first_at - joined_at <= MAX_AGE + SLACK, first
    woken: dict[str, Any] = await asyncio.wait_for(waiting, 10)
    assert woken["found"] is True
    assert woken["at"] - joined_at <= MAX_AGE + SLACK, woken

    await listener.request({"leave": "ticker"}, "left")
    left_at = time.time()
    await asyncio.sleep(MAX_AGE + SLACK)
    after = (await a.aget_json("/hot-sender/?group=ticker"))["figures"]
    assert after["sent"] > 0
    assert after["last_sent_at"] - left_at <= MAX_AGE + SLACK, after
    await asyncio.sleep(0.3)
    later = (await a.aget_json("/hot-sender/?group=ticker"))["figures"]
    assert later["sent"] == after["sent"], "the sender still calls the layer for an empty group"
    assert later["checks"] > after["checks"], "the sender stopped ticking"
    await a.aget_json("/hot-sender/?group=ticker&stop=1")
