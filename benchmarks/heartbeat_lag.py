"""How long one heartbeat holds its own server's event loop, by local connections.

One command: ``python benchmarks/heartbeat_lag.py``. It starts a throwaway
redis-server, records N connections of one node through the store (10,000 and
100,000), puts N trackers in that event loop's heartbeat as a server would
hold them, and runs heartbeats while a probe task measures the longest time the
loop went without running it (the loop's lag). Prints a table and a final
``RESULT {json}`` line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import configure_django, redis_server

SIZES = (10_000, 100_000)
BEATS = 20


async def measure(url: str, size: int) -> dict[str, float]:
    from channels_presence.heartbeat import Heartbeat
    from channels_presence.stores.base import Connection, SessionPolicy
    from channels_presence.stores.redis import RedisStore
    from channels_presence.tracker import PresenceTracker, State

    store = RedisStore(url, prefix=f"lag{size}", ttl=60)
    heartbeat = Heartbeat()
    policy = SessionPolicy(max_sessions=None)
    prefix = "specific.0123456789abcdef0123456789abcdef!"
    for start in range(0, size, 500):
        conns = [
            Connection(
                prefix + f"{i:032x}",
                str(i),
                None,
                groups=("lobby",),
                conn_id=f"{heartbeat.node}.{i + 1:x}",
            )
            for i in range(start, min(size, start + 500))
        ]
        await asyncio.gather(*(store.aconnect(c, policy) for c in conns))
        for c in conns:
            tracker = PresenceTracker(user=c.user, session=None, tracked=True)
            tracker.channel_name, tracker.conn_id = c.channel_name, c.conn_id
            tracker.groups, tracker.state, tracker.recorded = c.groups, State.CONNECTED, True
            heartbeat.trackers[c.conn_id] = tracker

    from channels_presence import stores

    stores.reset_store()
    stores._store = store  # the heartbeat talks to this store
    lags: list[float] = []
    stop = False

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not stop:
            await asyncio.sleep(0)
            now = loop.time()
            lags.append(now - last)
            last = now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    lags.clear()
    started = time.perf_counter()
    for _ in range(BEATS):
        await heartbeat.beat()
    elapsed = time.perf_counter() - started
    stop = True
    await task
    await store.aclose()
    return {"max_lag_ms": max(lags) * 1000, "beat_ms": elapsed / BEATS * 1000}


async def main(url: str) -> dict[str, Any]:
    return {str(size): await measure(url, size) for size in SIZES}


if __name__ == "__main__":
    with redis_server() as url:
        layer = {"BACKEND": "channels.layers.InMemoryChannelLayer"}
        configure_django(url, channel_layer=layer, presence={"LEAVE_GRACE": 0})
        results = asyncio.run(main(url))
    print(f"{'local connections':>18}  {'loop held, max':>15}  {'beat, mean':>11}")
    for size, r in results.items():
        print(f"{int(size):>18,}  {r['max_lag_ms']:>12.2f} ms  {r['beat_ms']:>8.2f} ms")
    print("RESULT " + json.dumps(results))
