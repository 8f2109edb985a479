"""Connects and disconnects per second on one Redis against a 3-primary Redis Cluster.

Run: ``python benchmarks/cluster.py`` (about a minute; ``--seconds``,
``--processes``, ``--concurrency`` to change the load).

Several processes at once (4 by default), each with its own store and event
loop and many coroutines, connect a connection (a random user of 5,000, one
random group of 200, ``MAX_SESSIONS=1``) and disconnect it again, as fast as
the store answers. The same load runs against:

* one redis-server, through ``RedisStore`` (one function call a connect or
  disconnect: the standalone path, unchanged);
* a Redis Cluster of three primaries made by ``redis-cli --cluster create``,
  through ``ClusterRedisStore`` (``REDIS_CLUSTER = True``: per-slot steps).

Printed, from one run: operations per second of each and their ratio; then,
on the cluster, the keys each primary holds under a standing population, the
calls each primary served (``INFO commandstats``) and its CPU seconds. The
per-node counts and shares do not depend on the cores; the throughput does:
every server and every client process here shares this machine's cores, so
three primaries cannot run three times as fast as one on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import random
import sys
import time
import uuid
from pathlib import Path

import harness
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from channels_presence.stores.base import Connection, SessionPolicy  # noqa: E402
from channels_presence.stores.cluster import ClusterRedisStore  # noqa: E402
from channels_presence.stores.redis import RedisStore  # noqa: E402
from tests.redis_cluster import RedisCluster, cluster_binaries  # noqa: E402

POLICY = SessionPolicy(max_sessions=1)
USERS = 5_000
GROUPS = 200
#: Connections left standing while the keys per primary are counted.
STANDING = 3_000


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if n == 0:
            return out


def make_store(kind: str, url: str, prefix: str, grace: float = 0.0) -> RedisStore:
    if kind == "cluster":
        return ClusterRedisStore(url, prefix=prefix, grace=grace)
    return RedisStore(url, prefix=prefix, grace=grace)


async def churn(
    kind: str, url: str, prefix: str, seconds: float, concurrency: int, grace: float = 0.0
) -> int:
    """Connect and disconnect for ``seconds``; returns how many pairs were done."""
    store = make_store(kind, url, prefix, grace)
    node = uuid.uuid4().hex[:8]
    seq = itertools.count(1)
    done = 0
    rng = random.Random()
    # Warm up: the library loads, the pools open.
    await store.agroup_size("warm")
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            s = _b36(next(seq))
            conn = Connection(
                f"specific.{node}!{s}",
                f"u{rng.randrange(USERS)}",
                None,
                groups=(f"g{rng.randrange(GROUPS)}",),
                conn_id=f"{node}.{s}",
            )
            result = await store.aconnect(conn, POLICY)
            if result.accepted:
                await store.adisconnect(conn)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await store.arefresh(node)
    await store.aclose()
    return done


def _process(args: tuple[str, str, str, float, int, float]) -> int:
    return asyncio.run(churn(*args))


def populate(kind: str, url: str, prefix: str) -> None:
    """STANDING connections that stay: groups are rarely empty, as on a live site."""
    store = make_store(kind, url, prefix)
    node = uuid.uuid4().hex[:8]
    for i in range(STANDING):
        s = _b36(i + 1)
        conn = Connection(
            f"specific.{node}!{s}",
            f"s{i % 1000}",
            None,
            groups=(f"g{i % GROUPS}", "lobby"),
            conn_id=f"{node}.{s}",
        )
        store.connect(conn, SessionPolicy(max_sessions=None))
    store.close()


def run(
    kind: str,
    url: str,
    ports: list[int],
    processes: int,
    seconds: float,
    concurrency: int,
    grace: float = 0.0,
) -> tuple[float, int, dict[int, float], dict[int, dict[str, int]]]:
    """Pairs per second over all processes, on top of a standing population.

    Also the pairs done, and the Redis CPU seconds each server used and the
    calls it served meanwhile.
    """
    prefix = f"b{uuid.uuid4().hex[:6]}"
    populate(kind, url, prefix)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        # The workers' imports are done before the CPU is read.
        pool.map(int, range(processes))
        before = {p: cpu(p) for p in ports}
        calls_before = {p: calls(p) for p in ports}
        started = time.monotonic()
        job = (kind, url, prefix, seconds, concurrency, grace)
        counts = pool.map(_process, [job] * processes)
        elapsed = time.monotonic() - started
        used = {p: cpu(p) - before[p] for p in ports}
        served = {
            p: {
                k: v - calls_before[p].get(k, 0)
                for k, v in calls(p).items()
                if k not in ("info", "cluster|slots", "cluster|nodes", "command|docs", "command")
            }
            for p in ports
        }
    return sum(counts) / min(elapsed, seconds + 0.5), sum(counts), used, served


def calls(port: int) -> dict[str, int]:
    with redis.Redis(port=port, decode_responses=True) as client:
        stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def cpu(port: int) -> float:
    with redis.Redis(port=port) as client:
        return float(harness.redis_cpu_seconds(client))


def standing_keys(cluster: RedisCluster) -> dict[int, int]:
    """Keys per primary under STANDING connections of 1,000 users in 200 groups."""
    store = ClusterRedisStore(cluster.url, prefix="standing", grace=0)
    nodes = [uuid.uuid4().hex[:8] for _ in range(4)]
    for i in range(STANDING):
        node = nodes[i % 4]
        s = _b36(i + 1)
        conn = Connection(
            f"specific.{node}!{s}",
            f"u{i % 1000}",
            None,
            groups=(f"g{i % GROUPS}", "lobby"),
            conn_id=f"{node}.{s}",
        )
        store.connect(conn, SessionPolicy(max_sessions=None))
    for node in nodes:
        store.refresh(node)
    store.close()
    return {port: cluster.dbsize(port) for port in cluster.ports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--grace",
        type=float,
        default=0.0,
        help="LEAVE_GRACE: with it, a user's first and "
        "last connections also write the pending departures in the {~} slot",
    )
    options = parser.parse_args()
    found = cluster_binaries()
    if isinstance(found, str):
        sys.exit(found)
    cluster = RedisCluster(*found)
    cluster.start()
    try:
        with harness.redis_server() as single_url:
            single_port = int(single_url.rsplit(":", 1)[1].split("/")[0])
            load = (options.processes, options.seconds, options.concurrency, options.grace)
            single, single_pairs, single_used, single_served = run(
                "single", single_url, [single_port], *load
            )
            single_cpu = single_used[single_port]
            clustered, cluster_pairs, used, served = run(
                "cluster", cluster.url, cluster.ports, *load
            )
            keys = standing_keys(cluster)
            info = harness.machine_info(single_url)
    finally:
        cluster.close()

    ratio = clustered / single
    harness.print_table(
        f"Connect + disconnect pairs per second, {options.processes} processes x "
        f"{options.concurrency} coroutines, {options.seconds:g} s each, LEAVE_GRACE "
        f"{options.grace:g} "
        f"({info['cores']} cores shared by every server and client)",
        ["store", "pairs/s", "ratio", "Redis CPU s"],
        [
            ["RedisStore, 1 redis-server", single, 1.0, single_cpu],
            ["ClusterRedisStore, 3 primaries", clustered, ratio, sum(used.values())],
        ],
    )
    total_keys = sum(keys.values())
    total_fcalls = sum(s.get("fcall", 0) + s.get("fcall_ro", 0) for s in served.values())
    total_calls = sum(sum(s.values()) for s in served.values())
    rows = []
    for port in cluster.ports:
        s = served[port]
        fc = s.get("fcall", 0) + s.get("fcall_ro", 0)
        rows.append(
            [
                f"127.0.0.1:{port}",
                keys[port],
                f"{keys[port] / total_keys:.0%}",
                fc,
                f"{fc / max(total_fcalls, 1):.0%}",
                sum(s.values()),
                used[port],
            ]
        )
    harness.print_table(
        f"Per primary: keys under {STANDING:,} standing connections; calls served and CPU "
        "during the cluster run",
        ["primary", "keys", "share", "FCALLs", "share", "commands run", "CPU s"],
        rows,
    )
    busiest = max(used.values()) / max(sum(used.values()), 1e-9)
    # What each would do with Redis the bottleneck and every server on a core
    # of its own: pairs per CPU second of the busiest server.
    single_capacity = single_pairs / max(single_cpu, 1e-9)
    cluster_capacity = cluster_pairs / max(max(used.values()), 1e-9)
    harness.print_table(
        "Redis-bound capacity: pairs per CPU second of the busiest Redis (each server on "
        "a core of its own)",
        ["store", "pairs", "busiest Redis CPU s", "pairs per CPU s", "ratio"],
        [
            ["RedisStore, 1 redis-server", single_pairs, single_cpu, single_capacity, 1.0],
            [
                "ClusterRedisStore, 3 primaries",
                cluster_pairs,
                max(used.values()),
                cluster_capacity,
                cluster_capacity / single_capacity,
            ],
        ],
    )
    print(
        f"\nThe busiest primary did {busiest:.0%} of the cluster's Redis CPU work "
        f"(1/3 would be a perfect spread); 3 primaries ran at {ratio:.2f}x one Redis "
        f"on {info['cores']} shared cores."
    )
    harness.emit(
        "cluster",
        {
            "single_pairs_per_s": round(single),
            "cluster_pairs_per_s": round(clustered),
            "ratio": round(ratio, 2),
            "keys_per_primary": list(keys.values()),
            "fcalls_per_primary": [
                served[p].get("fcall", 0) + served[p].get("fcall_ro", 0) for p in cluster.ports
            ],
            "calls_per_primary": [sum(served[p].values()) for p in cluster.ports],
            "cpu_per_primary": [round(used[p], 2) for p in cluster.ports],
            "fcalls_per_pair": round(total_fcalls / max(cluster_pairs, 1), 2),
            "single_fcalls_per_pair": round(
                single_served[single_port].get("fcall", 0) / max(single_pairs, 1), 2
            ),
            "calls_per_pair": round(total_calls / max(cluster_pairs, 1), 2),
            "all_calls": total_calls,
            "busiest_cpu_share": round(busiest, 2),
            "capacity_ratio": round(cluster_capacity / single_capacity, 2),
            "grace": options.grace,
            "cores": info["cores"],
            **{k: v for k, v in info.items() if k != "cores"},
        },
    )


if __name__ == "__main__":
    main()
