"""The existence cache: agroup_size/agroup_send with ``max_age``, and waiting for listeners.

Every test runs on both stores. Store reads are counted by wrapping the real
store's ``agroup_size``/``group_size`` (the calls still reach it); the Redis
test at the end counts the commands Redis itself executed. A connection
"on another server" is written straight into the store, past this process's
tracker, exactly as another server's connect would reach it.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

import channels_presence as presence
from channels_presence import listeners
from channels_presence.exceptions import InvalidDuration, PresenceError, StoreUnavailable
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, SessionPolicy

pytestmark = pytest.mark.usefixtures("backend")

#: Long enough that no cached entry expires during a test.
LONG = 60.0
MESSAGE = {"type": "chat.message", "text": "frame"}


_in_async_read: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "in_async_read", default=False
)


class Reads:
    """Counts the store's group-size reads; optionally makes each one slow."""

    def __init__(self) -> None:
        self.count = 0
        self.delay = 0.0
        self.fail: Exception | None = None


@pytest.fixture
def store_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Reads]:
    """``reads = store_reads()``: wrap the current store (call it after any settings change)."""

    def wrap() -> Reads:
        store = get_store()
        reads = Reads()
        async_size, sync_size = store.agroup_size, store.group_size

        async def agroup_size(group: str) -> int:
            reads.count += 1
            token = _in_async_read.set(True)
            try:
                size = await async_size(group)
            finally:
                _in_async_read.reset(token)
            # Slow on the way back: the store has answered, the answer is late.
            if reads.delay:
                await asyncio.sleep(reads.delay)
            if reads.fail is not None:
                raise reads.fail
            return size

        def group_size(group: str) -> int:
            if _in_async_read.get():
                # The embedded store's async read runs its sync one: one read.
                return sync_size(group)
            reads.count += 1
            size = sync_size(group)
            if reads.delay:
                time.sleep(reads.delay)
            return size

        monkeypatch.setattr(store, "agroup_size", agroup_size)
        monkeypatch.setattr(store, "group_size", group_size)
        return reads

    return wrap


_remote_seq = itertools.count(1)


async def join_elsewhere(group: str, channel: str = "specific.other!remote") -> Connection:
    """A connection that another server recorded: this process's cache is not told."""
    conn = Connection(
        channel_name=channel,
        user="99",
        session=None,
        groups=(group,),
        conn_id=f"elsewhere.{next(_remote_seq):x}",
    )
    result = await get_store().aconnect(conn, SessionPolicy(max_sessions=None))
    assert result.accepted
    return conn


# Reads from the cache ------------------------------------------------------------------


async def test_max_age_zero_reads_the_store_on_every_call(store_reads: Any) -> None:
    reads = store_reads()
    for _ in range(5):
        assert await presence.agroup_size("room") == 0
        assert await presence.agroup_size("room", max_age=0) == 0
    assert reads.count == 10


async def test_a_cached_size_costs_one_store_read_per_max_age(store_reads: Any) -> None:
    reads = store_reads()
    for _ in range(1000):
        assert await presence.agroup_size("room", max_age=LONG) == 0
    assert reads.count == 1
    await join_elsewhere("room")
    # Another server's join is not seen until the entry is older than max_age ...
    assert await presence.agroup_size("room", max_age=LONG) == 0
    # ... and a caller with a smaller bound reads again once the entry exceeds it.
    await asyncio.sleep(0.06)
    assert await presence.agroup_size("room", max_age=0.05) == 1
    assert reads.count == 2
    assert await presence.agroup_size("room", max_age=LONG) == 1
    assert reads.count == 2


async def test_concurrent_callers_share_one_read_in_flight(store_reads: Any) -> None:
    reads = store_reads()
    reads.delay = 0.05
    await join_elsewhere("room")
    sizes = await asyncio.gather(*(presence.agroup_size("room", max_age=LONG) for _ in range(50)))
    assert sizes == [1] * 50
    assert reads.count == 1


async def test_threads_share_one_read_and_the_cache_with_the_event_loop(
    store_reads: Any,
) -> None:
    reads = store_reads()
    reads.delay = 0.05
    threads = 4  # fewer than the default executor's workers on any machine
    start = threading.Barrier(threads, timeout=10)

    def ask() -> int:
        start.wait()
        return presence.group_size("room", max_age=LONG)

    sizes = await asyncio.gather(*(asyncio.to_thread(ask) for _ in range(threads)))
    assert sizes == [0] * threads
    assert reads.count == 1
    # The event loop finds what the threads read.
    assert await presence.agroup_size("room", max_age=LONG) == 0
    assert reads.count == 1


async def test_a_cancelled_reader_hands_the_read_over(store_reads: Any) -> None:
    reads = store_reads()
    reads.delay = 0.1
    await join_elsewhere("room")
    leader = asyncio.ensure_future(presence.agroup_size("room", max_age=LONG))
    await asyncio.sleep(0.02)
    follower = asyncio.ensure_future(presence.agroup_size("room", max_age=LONG))
    await asyncio.sleep(0.02)
    leader.cancel()
    assert await follower == 1
    assert leader.cancelled()
    assert reads.count == 2


async def test_a_failed_read_fails_its_waiters_and_is_not_cached(store_reads: Any) -> None:
    reads = store_reads()
    reads.delay = 0.05
    reads.fail = StoreUnavailable("redis is down")
    results = await asyncio.gather(
        *(presence.agroup_size("room", max_age=LONG) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert reads.count == 1
    reads.fail = None
    assert await presence.agroup_size("room", max_age=LONG) == 0
    assert reads.count == 2


async def test_the_setting_gives_the_default_bound(
    store_reads: Any, presence_settings: Any
) -> None:
    presence_settings(LISTENERS_MAX_AGE=LONG)
    reads = store_reads()
    for _ in range(10):
        assert await presence.agroup_size("room") == 0
        assert await presence.agroup_send("room", MESSAGE) == 0
    assert reads.count == 1
    assert await presence.agroup_size("room", max_age=0) == 0
    assert reads.count == 2


async def test_a_settings_change_forgets_every_cached_size(
    store_reads: Any, presence_settings: Any
) -> None:
    await join_elsewhere("room")
    assert await presence.agroup_size("room", max_age=LONG) == 1
    presence_settings(KEY_PREFIX="elsewhere")
    reads = store_reads()
    assert await presence.agroup_size("room", max_age=LONG) == 0
    assert reads.count == 1


async def test_many_groups_do_not_grow_the_cache_without_bound(
    store_reads: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listeners, "MAX_ENTRIES", 4)
    reads = store_reads()
    for i in range(10):
        await presence.agroup_size(f"room-{i}", max_age=LONG)
    assert reads.count == 10
    # The most recent ones are still cached; the oldest were dropped and read again.
    await presence.agroup_size("room-9", max_age=LONG)
    assert reads.count == 10
    await presence.agroup_size("room-0", max_age=LONG)
    assert reads.count == 11


# What this process changes ---------------------------------------------------------------


async def test_a_local_join_makes_a_cached_empty_group_non_empty_at_once(
    ws: Any, store_reads: Any
) -> None:
    reads = store_reads()
    assert await presence.agroup_size("kitchen", max_age=LONG) == 0
    await ws("/ws/room/kitchen/", user=1)
    assert await presence.agroup_size("kitchen", max_age=LONG) == 1
    comm = await ws(user=2)
    await comm.send_json_to({"join": "kitchen"})
    assert await comm.receive_json_from() == {"joined": "kitchen"}
    assert await presence.agroup_size("kitchen", max_age=LONG) == 2
    assert reads.count == 1


async def test_a_local_join_while_a_read_is_on_its_way_is_not_lost(
    ws: Any, store_reads: Any
) -> None:
    reads = store_reads()
    reads.delay = 2.0
    reading = asyncio.ensure_future(presence.agroup_size("kitchen", max_age=LONG))
    await asyncio.sleep(0.05)  # the store has answered 0; the answer is on its way
    await ws("/ws/room/kitchen/", user=1)
    assert not reading.done(), "the join must land while the read is on its way"
    assert await reading == 1
    # (The connect's presence diff may have read the store meanwhile, uncached.)
    before = reads.count
    assert await presence.agroup_size("kitchen", max_age=LONG) == 1
    assert reads.count == before


async def test_a_local_leave_lowers_the_count_but_never_claims_the_group_empty(
    ws: Any, store_reads: Any
) -> None:
    reads = store_reads()
    comm = await ws(user=1)
    await comm.send_json_to({"join": "kitchen"})
    assert await comm.receive_json_from() == {"joined": "kitchen"}
    assert await presence.agroup_size("kitchen", max_age=LONG) == 1
    # Someone joins on another server; this process's cache does not know yet.
    await join_elsewhere("kitchen")
    await comm.send_json_to({"leave": "kitchen"})
    assert await comm.receive_json_from() == {"left": "kitchen"}
    # The last listener here is not the last one anywhere: the store is asked.
    assert await presence.agroup_size("kitchen", max_age=LONG) == 1
    assert reads.count == 2


async def test_a_local_disconnect_lowers_the_cached_count(ws: Any, store_reads: Any) -> None:
    reads = store_reads()
    await ws("/ws/room/kitchen/", user=1)
    leaving = await ws("/ws/room/kitchen/", user=2)
    assert await presence.agroup_size("kitchen", max_age=LONG) == 2
    await leaving.disconnect()
    assert await presence.agroup_size("kitchen", max_age=LONG) == 1
    assert reads.count == 1


async def test_an_untracked_connection_does_not_make_a_group_non_empty(
    ws: Any, store_reads: Any
) -> None:
    store_reads()
    assert await presence.agroup_size("kitchen", max_age=LONG) == 0
    await ws("/ws/room/kitchen/", user=None)  # anonymous, ANONYMOUS="ignore"
    assert await presence.agroup_size("kitchen", max_age=LONG) == 0


# Sending ---------------------------------------------------------------------------------


async def test_cached_sends_to_an_empty_group_cost_neither_reads_nor_layer_calls(
    ws: Any, store_reads: Any, layer_sends: list[str]
) -> None:
    reads = store_reads()
    for _ in range(500):
        assert await presence.agroup_send("kitchen", MESSAGE, max_age=LONG) == 0
    assert (reads.count, layer_sends) == (1, [])
    comm = await ws(user=1)
    await comm.send_json_to({"join": "kitchen"})
    assert await comm.receive_json_from() == {"joined": "kitchen"}
    assert await presence.agroup_send("kitchen", MESSAGE, max_age=LONG) == 1
    assert layer_sends == ["kitchen"]
    assert await comm.receive_json_from() == {"chat": "frame"}
    assert reads.count == 1


async def test_a_group_that_empties_elsewhere_stops_costing_layer_calls_within_max_age(
    store_reads: Any, layer_sends: list[str]
) -> None:
    gone = await join_elsewhere("room", "specific.other!gone")
    assert await presence.agroup_send("room", MESSAGE, max_age=0.05) == 1
    departure = await get_store().adisconnect(gone)
    assert departure is not None
    await asyncio.sleep(0.06)
    assert await presence.agroup_send("room", MESSAGE, max_age=0.05) == 0
    assert layer_sends == ["room"]


async def test_the_sync_send_shares_the_cache(
    ws: Any, store_reads: Any, layer_sends: list[str]
) -> None:
    reads = store_reads()
    comm = await ws(user=1)
    assert await presence.agroup_size("lobby", max_age=LONG) == 1
    sent = await sync_to_async(presence.group_send)(
        "lobby", {"type": "chat.message", "text": "s"}, max_age=LONG
    )
    assert sent == 1
    assert await comm.receive_json_from() == {"chat": "s"}
    assert await sync_to_async(presence.group_send)("empty", MESSAGE, max_age=LONG) == 0
    assert await sync_to_async(presence.group_send)("empty", MESSAGE, max_age=LONG) == 0
    assert (reads.count, layer_sends) == (2, ["lobby"])


# Waiting for listeners ----------------------------------------------------------------------


async def test_waiting_times_out_without_reading_faster_than_max_age(store_reads: Any) -> None:
    reads = store_reads()
    assert not await presence.await_for_listeners("room", timeout=0.3, max_age=0.05)
    # One read per 0.05 s at the most (fewer on a busy machine), plus the first
    # and one that may fall on the deadline itself (0.3 / 0.05 is 5.999...).
    assert 1 <= reads.count <= round(0.3 / 0.05) + 2
    assert not listeners._cache._waiters


async def test_a_wait_ends_at_its_timeout_even_when_max_age_is_longer() -> None:
    started = time.monotonic()
    assert not await presence.await_for_listeners("room", timeout=0.2, max_age=30)
    assert 0.2 <= time.monotonic() - started < 2


def test_a_blocking_wait_ends_at_its_timeout_even_when_max_age_is_longer() -> None:
    started = time.monotonic()
    assert not presence.wait_for_listeners("room", timeout=0.2, max_age=30)
    assert 0.2 <= time.monotonic() - started < 2
    assert not listeners._cache._waiters


async def test_a_local_join_wakes_a_waiter_at_once(ws: Any, store_reads: Any) -> None:
    reads = store_reads()
    waiter = asyncio.ensure_future(presence.await_for_listeners("kitchen", max_age=LONG))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await ws("/ws/room/kitchen/", user=1)
    # With a 60 s bound, only the join can have woken it.
    assert await asyncio.wait_for(waiter, 5) is True
    assert reads.count == 1


async def test_a_join_elsewhere_ends_the_wait_within_max_age(store_reads: Any) -> None:
    reads = store_reads()
    waiter = asyncio.ensure_future(presence.await_for_listeners("room", timeout=10, max_age=0.1))
    await asyncio.sleep(0.05)
    await join_elsewhere("room")
    assert await asyncio.wait_for(waiter, 5) is True
    assert reads.count >= 2


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    waiter = asyncio.ensure_future(presence.await_for_listeners("room", max_age=LONG))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not listeners._cache._waiters
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_waiting_defaults_to_one_second_when_the_setting_is_zero(store_reads: Any) -> None:
    reads = store_reads()
    await join_elsewhere("room")
    assert await presence.await_for_listeners("room", timeout=0)
    assert listeners.DEFAULT_WAIT_MAX_AGE == 1.0
    assert reads.count == 1


async def test_the_sync_wait_is_woken_by_a_join_on_the_event_loop(ws: Any) -> None:
    waiting = asyncio.ensure_future(
        sync_to_async(presence.wait_for_listeners, thread_sensitive=False)(
            "kitchen", 10, max_age=LONG
        )
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await ws("/ws/room/kitchen/", user=1)
    assert await asyncio.wait_for(waiting, 5) is True
    assert not await sync_to_async(presence.wait_for_listeners, thread_sensitive=False)(
        "nobody", 0.1, max_age=0.05
    )


# Bad bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 10**400, "0.5", True, [1]])
async def test_a_bad_max_age_is_refused_naming_the_value(bad: Any) -> None:
    calls = [
        presence.agroup_size("room", max_age=bad),
        presence.agroup_send("room", MESSAGE, max_age=bad),
        presence.await_for_listeners("room", 1, max_age=bad),
    ]
    for call in calls:
        with pytest.raises(InvalidDuration, match=rf"max_age={bad!r}".replace("[", r"\[")):
            await call
    with pytest.raises(PresenceError, match="max_age"):
        presence.group_size("room", max_age=bad)


async def test_a_bad_timeout_or_a_zero_bound_for_a_wait_is_refused() -> None:
    with pytest.raises(InvalidDuration, match="timeout=-1"):
        await presence.await_for_listeners("room", -1)
    with pytest.raises(InvalidDuration, match="max_age=0 would"):
        await presence.await_for_listeners("room", 1, max_age=0)
    with pytest.raises(InvalidDuration, match="timeout='soon'"):
        presence.wait_for_listeners("room", "soon")  # type: ignore[arg-type]


# Redis's own count -----------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_cached_checks_send_redis_one_command_per_max_age(backend: str) -> None:
    import redis.asyncio as aioredis

    store = get_store()
    client = aioredis.Redis.from_url(store.url)  # type: ignore[attr-defined]

    async def commands() -> dict[str, int]:
        stats = await client.info("commandstats")
        return {k: int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}

    async def count(call: Callable[[], Any], times: int) -> tuple[int, int]:
        """Commands Redis ran for ``times`` calls: GET round trips (a size is one
        GET), and all (commandstats also counts what a function runs inside Redis)."""
        before = await commands()
        for _ in range(times):
            await call()
        after = await commands()
        delta = {k: after[k] - before.get(k, 0) for k in after}
        return delta.get("cmdstat_get", 0), sum(delta.values())

    try:
        await presence.agroup_size("warm", max_age=0)  # the client is connected
        one_read = await count(lambda: presence.agroup_size("room", max_age=0), 1)
        assert one_read[0] == 1
        cached = await count(lambda: presence.agroup_send("room", MESSAGE, max_age=LONG), 1000)
        assert cached == one_read
        uncached = await count(lambda: presence.agroup_send("room", MESSAGE, max_age=0), 10)
        assert uncached == (10, 10 * one_read[1])
    finally:
        await client.aclose()
