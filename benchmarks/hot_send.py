"""A hot sender: one task sending to a group as fast as it can, with 0 and 1 listener.

Run: ``python benchmarks/hot_send.py`` (about half a minute).

Three ways to send, from one asyncio task, each case for ``--seconds`` in each
of ``--rounds`` rounds (the cases take turns, so a busy machine slows them
alike; the median rate is shown, and ratios are medians of same-round ratios):

* ``layer``: channels_redis's own ``group_send`` (it always calls Redis: it
  must read the group to know it is empty);
* ``agroup_send``: presence's ``agroup_send(group, message)`` as it was, which
  reads the group's size from the presence store on every call (``max_age=0``);
* ``cached``: ``agroup_send(group, message, max_age=0.5)``, answered from the
  process's cache, read from the store at most once per 0.5 s.

Presence and the channel layer each get a throwaway Redis of their own, so
``INFO commandstats`` deltas tell whose commands they are. The counts include
the commands a Lua script runs inside Redis (a presence read is one EVALSHA
round trip running a few commands); the probe's own INFO calls are left out.
The listener is a channel in the layer group and a connection in the presence
store; nobody drains its inbox (the layer's capacity is raised so that every
message is really queued).

Targets: the cached check costs no Redis command per message (at most one read
per ``max_age``), and a cached send to an empty group is at least 10x as fast
as the layer's ``group_send``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import harness
import redis

PREFIX = "bench"
GROUP = "ticker"
MAX_AGE = 0.5
MESSAGE = {"type": "room.message", "text": "x" * 64}
LABELS = {
    "layer": "layer group_send",
    "uncached": "agroup_send (max_age=0)",
    "cached": f"agroup_send (max_age={MAX_AGE:g})",
}


def configure_django(presence_url: str, layer_url: str) -> None:
    harness.configure_django(
        presence_url,
        channel_layer={
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": layer_url, "socket_timeout": 15}],
                # Every message to the listener is queued, none dropped as "full".
                "capacity": 10_000_000,
            },
        },
        presence={"KEY_PREFIX": PREFIX, "TTL": 600, "MAX_SESSIONS": None},
    )


class Commands:
    """Commands a Redis server executed between two snapshots (INFO excluded)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.before: Counter[str] = Counter()

    def _calls(self) -> Counter[str]:
        stats = self.client.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})

    def start(self) -> None:
        self.before = self._calls()

    def stop(self) -> Counter[str]:
        delta = self._calls() - self.before
        delta.pop("info", None)
        return delta


async def timed_sends(send: Callable[[], Awaitable[Any]], seconds: float) -> tuple[int, float]:
    """Call ``send`` back to back for ``seconds``; the count and the time it took."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        # The clock is read once per 100 sends, so a 1 us send is not a clock benchmark.
        for _ in range(100):
            await send()
        count += 100
        if time.perf_counter() >= deadline:
            return count, time.perf_counter() - started


async def measure(
    presence_url: str, layer_url: str, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """Every case ``rounds`` times, the cases taking turns (the machine's noise is
    shared out); the median rate, and the commands of all rounds per message."""
    from channels.layers import get_channel_layer

    from channels_presence import agroup_send
    from channels_presence.stores import get_store
    from channels_presence.stores.base import Connection, SessionPolicy

    layer = get_channel_layer()
    store = get_store()
    probes = {"presence": Commands(presence_url), "layer": Commands(layer_url)}
    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "layer": lambda: layer.group_send(GROUP, MESSAGE),
        "uncached": lambda: agroup_send(GROUP, MESSAGE, max_age=0),
        "cached": lambda: agroup_send(GROUP, MESSAGE, max_age=MAX_AGE),
    }
    listener = await layer.new_channel()
    conn = Connection(channel_name=listener, user="1", session=None, groups=(GROUP,))
    results = []
    for listeners in (0, 1):
        if listeners:
            assert (await store.aconnect(conn, SessionPolicy(max_sessions=None))).accepted
        rates: dict[str, list[float]] = {way: [] for way in ways}
        sent: Counter[str] = Counter()
        used: dict[str, dict[str, Counter[str]]] = {
            way: {name: Counter() for name in probes} for way in ways
        }
        names = list(ways)
        for n in range(rounds):
            # Each round starts with another case, so none always follows the same one.
            for way in names[n % len(names) :] + names[: n % len(names)]:
                send = ways[way]
                # An empty inbox each time: the listener's queue must not grow across cases.
                probes["layer"].client.flushdb()
                if listeners:
                    await layer.group_add(GROUP, listener)
                for _ in range(50):  # pools connected, scripts loaded, the cache filled
                    await send()
                for probe in probes.values():
                    probe.start()
                count, elapsed = await timed_sends(send, seconds)
                for name, probe in probes.items():
                    used[way][name] += probe.stop()
                rates[way].append(count / elapsed)
                sent[way] += count
        for way in ways:
            per_1000 = {
                name: round(sum(used[way][name].values()) * 1000 / sent[way], 3) for name in probes
            }
            results.append(
                {
                    "way": way,
                    "listeners": listeners,
                    "messages": sent[way],
                    "per_second": round(statistics.median(rates[way])),
                    "per_second_rounds": [round(r) for r in rates[way]],
                    "presence_per_1000": per_1000["presence"],
                    # Every presence read is one EVALSHA: the round trips.
                    "presence_round_trips_per_1000": round(
                        used[way]["presence"]["evalsha"] * 1000 / sent[way], 3
                    ),
                    "layer_per_1000": per_1000["layer"],
                    "presence_commands": dict(used[way]["presence"]),
                    "layer_commands": dict(used[way]["layer"]),
                }
            )
    for probe in probes.values():
        probe.client.close()
    await store.aclose()
    return results


def ratio(results: list[dict[str, Any]], way: str, other: str, listeners: int) -> float:
    """The median over rounds of ``way``'s rate over ``other``'s in the same round."""
    rounds = {r["way"]: r["per_second_rounds"] for r in results if r["listeners"] == listeners}
    pairs = zip(rounds[way], rounds[other], strict=True)
    return round(statistics.median(a / b for a, b in pairs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per case and round (0.5)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of every case (6)")
    args = parser.parse_args()
    started = time.monotonic()
    with harness.redis_server() as presence_url, harness.redis_server() as layer_url:
        configure_django(presence_url, layer_url)
        figures: dict[str, Any] = {
            "machine": harness.machine_info(presence_url),
            "max_age": MAX_AGE,
            "seconds_per_case": args.seconds,
            "rounds": args.rounds,
        }
        results = asyncio.run(measure(presence_url, layer_url, args.seconds, args.rounds))
    figures["cases"] = results
    harness.print_table(
        "Sends from one task: median msgs/s; Redis commands per 1,000 messages "
        "(commandstats, in-script ones included)",
        [
            "way",
            "listeners",
            "msgs/s",
            "presence Redis",
            "(round trips)",
            "layer Redis",
            "all Redis",
        ],
        [
            [
                LABELS[r["way"]],
                r["listeners"],
                r["per_second"],
                r["presence_per_1000"],
                r["presence_round_trips_per_1000"],
                r["layer_per_1000"],
                r["presence_per_1000"] + r["layer_per_1000"],
            ]
            for r in results
        ],
    )
    figures["cached_empty_over_layer"] = ratio(results, "cached", "layer", 0)
    figures["cached_empty_over_uncached"] = ratio(results, "cached", "uncached", 0)
    figures["cached_listened_over_layer"] = ratio(results, "cached", "layer", 1)
    figures["cached_presence_commands_per_1000"] = [
        r["presence_per_1000"] for r in results if r["way"] == "cached"
    ]
    harness.print_table(
        "Targets",
        ["what", "measured", "target"],
        [
            [
                "cached send to an empty group vs layer group_send",
                f"{figures['cached_empty_over_layer']}x",
                ">= 10x",
            ],
            [
                "cached send to one listener vs layer group_send",
                f"{figures['cached_listened_over_layer']}x",
                "~1x",
            ],
            [
                "presence Redis commands per 1,000 cached checks (0 / 1 listener)",
                " / ".join(str(v) for v in figures["cached_presence_commands_per_1000"]),
                f"~0 (one read per {MAX_AGE:g} s)",
            ],
        ],
    )
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\n(elapsed {figures['elapsed_s']} s)")
    harness.emit("hot_send", figures)


if __name__ == "__main__":
    main()
