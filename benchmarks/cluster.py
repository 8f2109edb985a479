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


def make_store(kind: str, url: str, prefix: str) -> RedisStore:
    if kind == "cluster":
        return ClusterRedisStore(url, prefix=prefix, grace=0)
    return RedisStore(url, prefix=prefix, grace=0)


async def churn(kind: str, url: str, prefix: str, seconds: float, concurrency: int) -> int:
    """Connect and disconnect for ``seconds``; returns how many pairs were done."""
    store = make_store(kind, url, prefix)
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


def _process(args: tuple[str, str, str, float, int]) -> int:
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


def run(kind: str, url: str, processes: int, seconds: float, concurrency: int) -> float:
    """Pairs per second over all processes, on top of a standing population."""
    prefix = f"b{uuid.uuid4().hex[:6]}"
    populate(kind, url, prefix)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        started = time.monotonic()
        counts = pool.map(_process, [(kind, url, prefix, seconds, concurrency)] * processes)
        elapsed = time.monotonic() - started
    # Startup of the pool is outside the measured window of each process.
    return sum(counts) / min(elapsed, seconds + 0.5)


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
    options = parser.parse_args()
    found = cluster_binaries()
    if isinstance(found, str):
        sys.exit(found)
    cluster = RedisCluster(*found)
    cluster.start()
    try:
        with harness.redis_server() as single_url:
            single_port = int(single_url.rsplit(":", 1)[1].split("/")[0])
            load = (options.processes, options.seconds, options.concurrency)
            single_cpu = cpu(single_port)
            single = run("single", single_url, *load)
            single_cpu = cpu(single_port) - single_cpu
            before = {p: calls(p) for p in cluster.ports}
            cpu_before = {p: cpu(p) for p in cluster.ports}
            clustered = run("cluster", cluster.url, *load)
            served = {
                p: {
                    k: v - before[p].get(k, 0)
                    for k, v in calls(p).items()
                    if k not in ("info", "cluster|slots", "cluster|nodes", "command|docs")
                }
                for p in cluster.ports
            }
            used = {p: cpu(p) - cpu_before[p] for p in cluster.ports}
            keys = standing_keys(cluster)
            info = harness.machine_info(single_url)
    finally:
        cluster.close()

    ratio = clustered / single
    harness.print_table(
        f"Connect + disconnect pairs per second, {options.processes} processes x "
        f"{options.concurrency} coroutines, {options.seconds:g} s each "
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
        ["primary", "keys", "share", "FCALLs", "share", "all calls", "CPU s"],
        rows,
    )
    busiest = max(used.values()) / max(sum(used.values()), 1e-9)
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
            "fcalls_per_pair": round(total_fcalls / max(clustered * options.seconds, 1), 2),
            "all_calls": total_calls,
            "busiest_cpu_share": round(busiest, 2),
            "cores": info["cores"],
            **{k: v for k, v in info.items() if k != "cores"},
        },
    )


if __name__ == "__main__":
    main()
