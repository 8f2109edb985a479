"""The bookkeeping of one connect and one disconnect, without websockets or HTTP.

Run with the server's own Python and environment (``BENCH_VARIANT`` and the
rest, see ``settings.py``), after ``setup_db``::

    python -m benchserver.work_alone --seconds 5 --concurrency 50

What a consumer of each variant does on connect and disconnect, called
directly, ``--concurrency`` tasks at once on one event loop:

- ``bare``: ``group_add`` and ``group_discard`` on the channel layer;
- ``presence``: ``PresenceTracker.aconnect`` and ``adisconnect`` (the store
  write plus the layer group, as ``PresenceConsumerMixin`` calls them);
- ``peer``: ``Room.objects.add`` and ``Presence.objects.leave_all`` in the
  thread a sync consumer runs them in (``database_sync_to_async``).

Prints one JSON line: cycles per second and connect/disconnect latencies.
"""

import argparse
import asyncio
import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchserver.settings")

GROUP = "lobby"


def percentile_ms(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank] * 1000, 3)


async def run(variant: str, seconds: float, warmup: float, concurrency: int) -> dict:
    from channels.db import database_sync_to_async
    from channels.layers import get_channel_layer
    from django.contrib.auth.models import User

    layer = get_channel_layer()
    users = await database_sync_to_async(lambda: list(User.objects.order_by("pk")))()
    if not users:
        raise SystemExit("no users: run benchserver.setup_db first")

    if variant == "presence":
        from channels_presence.tracker import PresenceTracker

        async def cycle(user: User, channel: str) -> tuple[float, float]:
            tracker = PresenceTracker(user=str(user.pk), session=None, tracked=True)
            t0 = time.perf_counter()
            admission = await tracker.aconnect(layer, channel, [GROUP])
            t1 = time.perf_counter()
            if not admission.accepted:
                raise RuntimeError(f"refused: {admission}")
            await tracker.adisconnect()
            return t1 - t0, time.perf_counter() - t1

    elif variant == "peer":
        from channels_presence.models import Presence, Room

        add = database_sync_to_async(Room.objects.add)
        leave_all = database_sync_to_async(Presence.objects.leave_all)

        async def cycle(user: User, channel: str) -> tuple[float, float]:
            t0 = time.perf_counter()
            await add(GROUP, channel, user)
            t1 = time.perf_counter()
            await leave_all(channel)
            return t1 - t0, time.perf_counter() - t1

    else:

        async def cycle(user: User, channel: str) -> tuple[float, float]:
            t0 = time.perf_counter()
            await layer.group_add(GROUP, channel)
            t1 = time.perf_counter()
            await layer.group_discard(GROUP, channel)
            return t1 - t0, time.perf_counter() - t1

    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + seconds
    connects: list[float] = []
    disconnects: list[float] = []
    completed = 0

    async def worker(n: int) -> None:
        nonlocal completed
        user = users[n % len(users)]
        while time.perf_counter() < window_end:
            channel = await layer.new_channel()
            began = time.perf_counter()
            connect_s, disconnect_s = await cycle(user, channel)
            ended = time.perf_counter()
            if window_start <= ended <= window_end:
                completed += 1
            if window_start <= began and ended <= window_end:
                connects.append(connect_s)
                disconnects.append(disconnect_s)

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return {
        "cycles_per_s": round(completed / seconds, 1),
        "connect_p50_ms": percentile_ms(connects, 50),
        "connect_p99_ms": percentile_ms(connects, 99),
        "disconnect_p50_ms": percentile_ms(disconnects, 50),
        "disconnect_p99_ms": percentile_ms(disconnects, 99),
        "cycles": completed,
    }


def main() -> None:
    import django

    django.setup()
    from django.conf import settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(run(settings.VARIANT, args.seconds, args.warmup, args.concurrency))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
