"""A server process that has served millions of connections: retire and reap stay bounded.

Run: ``python benchmarks/long_lived_node.py [--lifetimes 10000,1000000,10000000,100000000]``
(about a minute).

A node (one event loop of one server process) numbers its connections in
order and files them in buckets of 128 by that number, so a process that has
served 100,000,000 connections over its life has about 780,000 buckets
behind it, nearly all empty. Two operations look through them: ``retire``
(a node that goes idle checks that it has no connection left) and the reaping
of a dead node by the survivors (``sweep`` here, as a heartbeat does it).

For each lifetime, the store is driven directly on a throwaway Redis: a node
holds one connection from the start of its life and 100 from the end of it
(one group each). For ``retire`` all of them disconnect first; for the reap
they stay, the node stops beating, and once its ``TTL`` (1 s) has passed
another store sweeps it. Each figure is the longest ``FCALL`` in Redis's
``SLOWLOG`` during that step, the number of calls it took (``INFO
commandstats``) and the client's time. The last line compares the longest
script at the largest lifetime with the smallest: 1.0 means the cost does not
grow with what the node served.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import harness
import redis

from channels_presence.heartbeat import _base36
from channels_presence.stores.base import Connection, SessionPolicy
from channels_presence.stores.redis import RedisStore

UNLIMITED = SessionPolicy(max_sessions=None)
#: Connections the node holds from the end of its life.
RECENT = 100


def _connections(node: str, lifetime: int) -> list[Connection]:
    seqs = [1, *range(lifetime - RECENT + 1, lifetime + 1)]
    return [
        Connection(
            f"specific.{node}!{_base36(seq)}",
            f"u{n}",
            None,
            groups=("lobby",),
            conn_id=f"{node}.{_base36(seq)}",
        )
        for n, seq in enumerate(seqs)
    ]


def _fcalls(client: redis.Redis) -> int:
    calls: int = client.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)
    return calls


def _measure(client: redis.Redis, step: Any) -> tuple[Any, float, int, float]:
    """Run ``step``; returns its result, the longest FCALL (ms), calls and client seconds."""
    client.slowlog_reset()
    client.config_set("slowlog-log-slower-than", 0)
    calls = _fcalls(client)
    started = time.perf_counter()
    result = step()
    elapsed = time.perf_counter() - started
    calls = _fcalls(client) - calls
    client.config_set("slowlog-log-slower-than", 10_000)
    longest = 0
    for entry in client.slowlog_get(1024):
        command = entry["command"]
        command = command.decode() if isinstance(command, bytes) else command
        if command.upper().startswith("FCALL"):
            longest = max(longest, entry["duration"])
    return result, longest / 1000, calls, elapsed


def run(url: str, lifetime: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    store = RedisStore(url, prefix=prefix, ttl=1)
    sweeper = RedisStore(url, prefix=prefix, ttl=1)
    try:
        idle = uuid.uuid4().hex[:8]
        for c in _connections(idle, lifetime):
            assert store.connect(c, UNLIMITED).accepted
            store.disconnect(c)
        retired, retire_ms, retire_calls, retire_s = _measure(client, lambda: store.retire(idle))
        assert retired is True, "the idle node was not retired"

        dead = uuid.uuid4().hex[:8]
        held = _connections(dead, lifetime)
        for c in held:
            assert store.connect(c, UNLIMITED).accepted
        time.sleep(1.2)  # its TTL passes: nobody beats for it
        swept, reap_ms, reap_calls, reap_s = _measure(client, sweeper.sweep)
        assert len(swept) == len(held), f"reaped {len(swept)} of {len(held)}"
        assert sweeper.group_size("lobby") == 0
    finally:
        store.close()
        sweeper.close()
        client.close()
    return {
        "lifetime": lifetime,
        "buckets": lifetime // 128 + 1,
        "retire_longest_ms": retire_ms,
        "retire_calls": retire_calls,
        "retire_s": retire_s,
        "reap_longest_ms": reap_ms,
        "reap_calls": reap_calls,
        "reap_s": reap_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lifetimes",
        default="10000,1000000,10000000,100000000",
        help="connections the node has served, comma-separated",
    )
    args = parser.parse_args()
    lifetimes = [int(x) for x in args.lifetimes.split(",")]
    rows = []
    with harness.redis_server() as url:
        for lifetime in lifetimes:
            rows.append(run(url, lifetime))
            print(f"lifetime {lifetime:,}: done", flush=True)
        machine = harness.machine_info(url)
    harness.print_table(
        "A node that served many connections: retire and reap (longest FCALL in SLOWLOG)",
        ["served", "buckets", "retire ms", "retire calls", "reap ms", "reap calls", "reap s"],
        [
            [
                r["lifetime"],
                r["buckets"],
                r["retire_longest_ms"],
                r["retire_calls"],
                r["reap_longest_ms"],
                r["reap_calls"],
                r["reap_s"],
            ]
            for r in rows
        ],
    )
    # Against the first lifetime whose buckets one call cannot look through
    # whole (1,024 of them): from there on, more buckets means more calls.
    base = next((r for r in rows if r["buckets"] > 1024), rows[0])
    last = rows[-1]
    figures = {
        "machine": machine,
        "rows": rows,
        "longest_ms": max(max(r["retire_longest_ms"], r["reap_longest_ms"]) for r in rows),
        "retire_ratio": last["retire_longest_ms"] / max(base["retire_longest_ms"], 0.001),
        "reap_ratio": last["reap_longest_ms"] / max(base["reap_longest_ms"], 0.001),
    }
    print(
        f"\nlongest script at {last['lifetime']:,} served vs {base['lifetime']:,}: "
        f"retire {figures['retire_ratio']:.2f}x, reap {figures['reap_ratio']:.2f}x; "
        f"longest of all {figures['longest_ms']:.2f} ms (target: at most 5 ms)"
    )
    harness.emit("long_lived_node", figures)


if __name__ == "__main__":
    main()
