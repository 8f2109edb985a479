"""An unreachable Redis: connections proceed or are refused, and the log stays readable."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

import channels_presence as presence
from channels_presence import signals
from channels_presence.exceptions import StoreUnavailable
from channels_presence.heartbeat import get_heartbeat
from channels_presence.logs import store_failures
from tests.redis_server import RedisServer, find_redis_server
from tests.test_consumers import closed_with, still_open


def errors(caplog: Any) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "channels_presence" and r.levelno >= logging.ERROR
    ]


async def test_allow_lets_connections_in_untracked_with_one_log_line(
    ws: Any, dead_redis: None, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="channels_presence")
    comms = [await ws(user=pk) for pk in range(1, 6)]
    for comm in comms:
        await still_open(comm)
    await get_heartbeat().beat()
    lines = errors(caplog)
    assert len(lines) == 1, lines
    assert "unreachable" in lines[0] and "127.0.0.1" in lines[0]
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await presence.agroup_size("lobby")


async def test_reject_refuses_with_1011(ws: Any, dead_redis: None, presence_settings: Any) -> None:
    presence_settings(ON_STORE_ERROR="reject")
    comm = await ws(user=1)
    assert await closed_with(comm, 1011) == []


async def test_a_recovery_is_logged_once(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="channels_presence")
    store_failures.failures = 0
    for _ in range(3):
        store_failures.failed(OSError("down"))
    store_failures.succeeded()
    store_failures.succeeded()
    messages = [r.getMessage() for r in caplog.records if r.name == "channels_presence"]
    assert len(messages) == 2
    assert "recovered after 3 failed" in messages[1]


# Writes refused for a while (a primary without its replicas, a failover) ----------


@pytest.fixture
def refusing_redis(key_prefix: str) -> Iterator[redis.Redis]:
    """The presence cache on a Redis of the test's own; the test makes it refuse
    writes (while reads and the data stay) with ``CONFIG SET min-replicas-to-write 1``."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("Redis tests skipped: no redis-server binary was found on PATH")
    server = RedisServer(binary)
    server.start()
    try:
        with (
            override_settings(
                CACHES={
                    "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.url}
                },
                CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix, "TTL": 30, "HEARTBEAT": 10},
            ),
            redis.Redis.from_url(server.url, decode_responses=True) as client,
        ):
            store_failures.failures = 0
            yield client
    finally:
        store_failures.failures = 0
        server.close()


def refuse_writes(client: redis.Redis, refuse: bool) -> None:
    client.config_set("min-replicas-to-write", 1 if refuse else 0)


async def settles(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check()`` holds; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.redis
async def test_a_disconnect_the_store_refused_is_done_and_announced_once_it_is_back(
    refusing_redis: redis.Redis, ws: Any
) -> None:
    closed: list[str] = []

    def receiver(sender: Any, connection: Any, reason: str, **kwargs: Any) -> None:
        closed.append(f"{connection.user}:{reason}")

    signals.connection_closed.connect(receiver)
    try:
        first, second = await ws(user=1), await ws(user=2)
        refuse_writes(refusing_redis, True)
        await first.disconnect()
        assert await presence.agroup_size("lobby") == 2  # still recorded
        refuse_writes(refusing_redis, False)
        # Within about a second (the heartbeat's retry), not HEARTBEAT (10 s).
        await settles(lambda: _size_is("lobby", 1), within=3.0)
        assert closed == ["1:disconnected"]
        await still_open(second)
    finally:
        signals.connection_closed.disconnect(receiver)


@pytest.mark.redis
async def test_a_join_the_store_refused_is_written_once_it_is_back(
    refusing_redis: redis.Redis, ws: Any
) -> None:
    comm = await ws(user=1)
    refuse_writes(refusing_redis, True)
    await comm.send_json_to({"join": "room"})
    assert await comm.receive_json_from(timeout=3) == {"joined": "room"}
    assert await presence.agroup_size("room") == 0
    refuse_writes(refusing_redis, False)
    await settles(lambda: _size_is("room", 1), within=3.0)
    assert await presence.agroup_size("lobby") == 1
    await still_open(comm)


@pytest.mark.redis
async def test_a_refused_disconnect_is_announced_when_a_refused_join_writes_the_node_back(
    refusing_redis: redis.Redis, ws: Any
) -> None:
    """Both in one outage: the join makes the next beat write the whole node
    back (a reset first), and the disconnect must still be announced, once."""
    closed: list[str] = []

    def receiver(sender: Any, connection: Any, reason: str, **kwargs: Any) -> None:
        closed.append(f"{connection.user}:{reason}")

    async def announced() -> bool:
        return closed == ["1:disconnected"]

    signals.connection_closed.connect(receiver)
    try:
        first, second = await ws(user=1), await ws(user=2)
        refuse_writes(refusing_redis, True)
        await second.send_json_to({"join": "room"})
        assert await second.receive_json_from(timeout=3) == {"joined": "room"}
        await first.disconnect()
        refuse_writes(refusing_redis, False)
        await settles(lambda: _size_is("room", 1), within=3.0)
        await settles(lambda: _size_is("lobby", 1), within=3.0)
        await settles(announced, within=3.0)
        await asyncio.sleep(0.3)
        assert closed == ["1:disconnected"]
        await still_open(second)
    finally:
        signals.connection_closed.disconnect(receiver)


async def _size_is(group: str, size: int) -> bool:
    return await presence.agroup_size(group) == size
