"""Reads at scale: population reads against groups of 10 to 100,000 members.

Run: ``python benchmarks/reads.py`` (about a minute).

Connections are written straight into a Redis of its own through the store's
own ``connect`` script (``RedisStore``), pipelined 1,000 at a time: one
distinct user per connection, a 32-character session key and a channel name
shaped like channels_redis's. The reads then go through the public API
(``channels_presence.group_size`` ...) of a Django configured in-process with
``CACHES["default"]`` on that Redis, exactly as a view would call them.

Also measured: Redis memory per tracked connection (``INFO memory``
``used_memory`` delta over the 100,000-member group) with where it goes
(``MEMORY USAGE`` per key), and how long one heartbeat of one process takes
for 10 to 10,000 connections (the refresh script runs inside Redis, which
serves no one else meanwhile).

Targets: read latency at 100,000 members within 2 x that at 10; at most 300
bytes of Redis memory per connection.
"""

from __future__ import annotations

import argparse
import secrets
import time
import uuid
from typing import Any

import harness
import redis

PREFIX = "bench"
TTL = 600.0  # nothing expires during the run
SIZES = (10, 1_000, 10_000, 100_000)
BATCH = 1_000


def configure_django(redis_url: str) -> None:
    harness.configure_django(
        redis_url,
        channel_layer={"BACKEND": "channels.layers.InMemoryChannelLayer"},
        presence={"KEY_PREFIX": PREFIX, "TTL": TTL, "MAX_SESSIONS": None},
    )


def channel_name() -> str:
    """A name shaped like channels_redis's: ``specific.<32 hex>!<12 chars>``."""
    return f"specific.{uuid.uuid4().hex}!{secrets.token_urlsafe(9)}"


def populate(store: Any, client: redis.Redis, group: str, count: int, first_user: int) -> None:
    """Record ``count`` connections in ``group`` with the store's connect script, pipelined."""
    from channels_presence.stores.base import Connection, SessionPolicy
    from channels_presence.stores.redis import _SCRIPTS

    # The store's private op builder gives the exact keys and arguments its own
    # connect() sends; pipelining them only saves the benchmark's waiting.
    script = _SCRIPTS["connect"]
    client.script_load(script.source)
    policy = SessionPolicy(max_sessions=None)
    for start in range(0, count, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(count, start + BATCH)):
            conn = Connection(
                channel_name=channel_name(),
                user=str(first_user + i),
                session=secrets.token_hex(16),
                groups=(group,),
            )
            numkeys, argv = store._argv(store._connect_op(conn, policy))
            pipe.evalsha(script.sha, numkeys, *argv)
        for reply in pipe.execute():
            if not reply.startswith("[true"):
                raise RuntimeError(f"connect was refused: {reply}")


def evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    """Redis's own count of EVALSHA calls and the microseconds spent running them."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def timed(call: Any, iterations: int, client: redis.Redis) -> tuple[list[float], float]:
    """Client-side seconds per call, and the milliseconds Redis spent per script run."""
    call()  # warm: client connected, script cached
    samples = []
    calls_before, usec_before = evalsha_usec(client)
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    calls_after, usec_after = evalsha_usec(client)
    runs = max(1, calls_after - calls_before)
    return samples, (usec_after - usec_before) / runs / 1000


def interleaved(calls: dict[Any, Any], iterations: int) -> dict[Any, list[float]]:
    """Time several calls in turns, so a busy moment of the machine hits them all alike."""
    for call in calls.values():
        call()
    samples: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(iterations):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            samples[key].append(time.perf_counter() - started)
    return samples


def key_kind(key: str) -> str:
    """A key's pattern: ``P:group:<g>:users``, ``P:user:<id>``, ``P:conn`` ..."""
    parts = key.split(":")
    if len(parts) >= 3 and parts[1] == "group":
        return ":".join(["P", "group", "<g>", *parts[3:]])
    if len(parts) >= 3:
        return f"P:{parts[1]}:<id>"
    return "P:" + ":".join(parts[1:])


def memory_breakdown(client: redis.Redis, count: int, delta: int) -> dict[str, float]:
    """Bytes per connection in each kind of key (``MEMORY USAGE``), and what is left."""
    keys = list(client.scan_iter(f"{PREFIX}:*", count=5000))
    totals: dict[str, int] = {}
    numbers: dict[str, int] = {}
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
            pipe.type(key)
        replies = pipe.execute()
        for key, used, kind in zip(chunk, replies[::2], replies[1::2], strict=True):
            name = f"{key_kind(key)} ({kind})"
            totals[name] = totals.get(name, 0) + int(used or 0)
            numbers[name] = numbers.get(name, 0) + 1
    out = {
        (name if numbers[name] == 1 else f"{name} x {numbers[name]:,}"): round(n / count, 1)
        for name, n in sorted(totals.items(), key=lambda item: -item[1])
    }
    out["not in any key (server dicts, expiry table, allocator)"] = round(
        (delta - sum(totals.values())) / count, 1
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2000, help="calls per count read")
    parser.add_argument("--heartbeats", default="10,1000,10000", help="heartbeat sizes")
    args = parser.parse_args()
    started = time.monotonic()

    with harness.redis_server() as url:
        configure_django(url)
        import channels_presence as api
        from channels_presence.stores import get_store
        from channels_presence.stores.base import Connection

        store = get_store()
        client = redis.Redis.from_url(url, decode_responses=True)
        figures: dict[str, Any] = {"machine": harness.machine_info(url), "sizes": list(SIZES)}

        # Memory first, on an empty server: the 100,000-member group alone.
        from channels_presence.stores.redis import _SCRIPTS

        client.script_load(_SCRIPTS["connect"].source)  # loaded before the baseline
        before = int(client.info("memory")["used_memory"])
        t0 = time.monotonic()
        populate(store, client, "g100000", 100_000, first_user=1)
        write_s = time.monotonic() - t0
        after = int(client.info("memory")["used_memory"])
        per_conn = (after - before) / 100_000
        figures["memory"] = {
            "bytes_per_connection": round(per_conn, 1),
            "used_memory_delta": after - before,
            "breakdown": memory_breakdown(client, 100_000, after - before),
            "populate_connects_per_s": round(100_000 / write_s),
        }
        user = 100_001
        for size in SIZES[:-1]:
            populate(store, client, f"g{size}", size, first_user=user)
            user += size

        rows, reads = [], {}
        for size in SIZES:
            group = f"g{size}"
            if api.group_size(group) != size or api.group_user_count(group) != size:
                raise RuntimeError(f"{group} does not hold {size} members")
        counts = {
            "group_size": lambda g: api.group_size(g),
            "group_user_count": lambda g: api.group_user_count(g),
            "group_sizes": lambda g: api.group_sizes([g]),
        }
        for name, read in counts.items():
            samples = interleaved(
                {size: (lambda g=f"g{size}", r=read: r(g)) for size in SIZES}, args.iterations
            )
            for size in SIZES:
                p50 = harness.percentile(samples[size], 50) * 1000
                p99 = harness.percentile(samples[size], 99) * 1000
                reads.setdefault(name, {})[size] = {
                    "p50_ms": round(p50, 4),
                    "p99_ms": round(p99, 4),
                }
                rows.append([name, size, args.iterations, round(p50, 3), round(p99, 3), "-"])
        for size in SIZES:
            iterations = max(3, min(200, 300_000 // size))
            samples, redis_ms = timed(lambda g=f"g{size}": api.group_members(g), iterations, client)
            p50 = harness.percentile(samples, 50) * 1000
            p99 = harness.percentile(samples, 99) * 1000
            reads.setdefault("group_members", {})[size] = {
                "p50_ms": round(p50, 4),
                "p99_ms": round(p99, 4),
                "redis_ms": round(redis_ms, 4),
            }
            rows.append(["group_members", size, iterations, round(p50, 3), round(p99, 3), redis_ms])
        # group_sizes of all four groups at once: one round trip.
        every = [f"g{s}" for s in SIZES]
        samples, _ = timed(lambda: api.group_sizes(every), args.iterations, client)
        reads["group_sizes_all_four"] = {
            "p50_ms": round(harness.percentile(samples, 50) * 1000, 4),
            "p99_ms": round(harness.percentile(samples, 99) * 1000, 4),
        }
        rows.append([
            "group_sizes (all 4)", sum(SIZES), args.iterations,
            round(harness.percentile(samples, 50) * 1000, 3),
            round(harness.percentile(samples, 99) * 1000, 3), "-",
        ])  # fmt: skip
        figures["reads"] = reads

        # One process's heartbeat: the refresh script over its N connections.
        heartbeat_rows, heartbeat = [], {}
        for n in [int(s) for s in args.heartbeats.split(",") if s]:
            conns = tuple(
                Connection(channel_name(), str(900_000 + i), secrets.token_hex(16), 0.0, ("hb",))
                for i in range(n)
            )
            store.refresh(conns)  # first call writes them all ("restored")
            samples, redis_ms = timed(
                lambda c=conns: store.refresh(c), max(3, min(50, 50_000 // n)), client
            )
            p50 = harness.percentile(samples, 50) * 1000
            heartbeat[n] = {
                "p50_ms": round(p50, 3),
                "redis_ms": round(redis_ms, 3),
                "redis_us_per_connection": round(redis_ms * 1000 / n, 2),
            }
            heartbeat_rows.append(
                [n, round(p50, 2), round(redis_ms, 2), round(redis_ms * 1000 / n, 2)]
            )
            for c in conns:
                store.disconnect(c.channel_name)
        figures["heartbeat"] = heartbeat
        client.close()
        store.close()

    harness.print_table(
        "Read latency through the public API (sync), one client, loopback Redis",
        ["read", "group members", "calls", "p50 ms", "p99 ms", "of which in Redis, ms"],
        rows,
    )
    growth = {
        name: round(reads[name][SIZES[-1]]["p50_ms"] / reads[name][SIZES[0]]["p50_ms"], 2)
        for name in ("group_size", "group_user_count", "group_sizes", "group_members")
    }
    figures["growth_100000_over_10"] = growth
    harness.print_table(
        "Growth: p50 at 100,000 members / p50 at 10 (target for counts: <= 2)",
        ["read", "ratio"],
        [[k, v] for k, v in growth.items()],
    )
    mem = figures["memory"]
    harness.print_table(
        f"Redis memory per tracked connection at 100,000 (target <= 300 bytes): "
        f"{mem['bytes_per_connection']:.0f} bytes (used_memory delta {mem['used_memory_delta']:,})",
        ["where (MEMORY USAGE, per connection)", "bytes"],
        [[k, v] for k, v in mem["breakdown"].items()],
    )
    harness.print_table(
        "One heartbeat (refresh script) of one process, by its connection count "
        "(Redis serves no other client while a script runs)",
        ["connections", "p50 ms", "Redis busy, ms", "Redis us per connection"],
        heartbeat_rows,
    )
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\n(elapsed {figures['elapsed_s']} s)")
    harness.emit("reads", figures)


if __name__ == "__main__":
    main()
