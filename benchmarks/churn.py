"""Connection churn: connect, join a group, disconnect, many clients at once.

Run: ``python benchmarks/churn.py`` (about three minutes on 2 cores).

Three servers, one at a time, each a real uvicorn process with the Redis
channel layer, sessions in Redis and real logged-in users (session cookies),
every client its own user:

- ``bare``: ``AsyncWebsocketConsumer`` joining the group via ``groups``;
- ``presence``: the same consumer with ``PresenceConsumerMixin`` and the Redis
  store (``CACHES["default"]`` is django-redis on the same Redis), with the
  package's default settings (``MAX_SESSIONS=1``: a client that reconnects
  before its last disconnect was processed supersedes that connection, as a
  page reload does) except ``TTL`` (``--ttl``, 6 s), shortened so that the
  heartbeat (``TTL / 3``, every 2 s) beats several times in every window; the
  table shows how many beats each variant's windows held;
- ``peer``: ``django-channels-more-than-present`` (``Room.objects.add`` on
  connect, ``@remove_presence`` on disconnect) on SQLite, from its own venv.

The same client code measures all three: websocket clients that each connect,
wait for the server's ``ready`` (sent once the group is joined), close, and
start again. Two phases per server: loaded (``--concurrency`` clients, for
connects/s and latency under load) and unloaded (one client, for the latency
a connect costs without queueing). The variants run in turns, ``--rounds``
times, and the samples of all rounds are pooled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from websockets.asyncio.client import connect

VARIANTS = ("bare", "presence", "peer")
GROUP = "lobby"


@dataclass
class Phase:
    """What the clients saw during one timed window."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    #: CPU seconds used during the window by the uvicorn process, Redis and the clients.
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    #: Connects completed in the window, whenever they started (for the CPU figures).
    completed: int = 0
    #: Presence heartbeats the server started during the window (presence only).
    heartbeats: int = 0

    def merge(self, other: Phase) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds
        self.errors += other.errors
        self.server_cpu += other.server_cpu
        self.redis_cpu += other.redis_cpu
        self.client_cpu += other.client_cpu
        self.completed += other.completed
        self.heartbeats += other.heartbeats

    def cpu_ms_per_connect(self, which: str) -> float:
        return getattr(self, f"{which}_cpu") / self.completed * 1000 if self.completed else 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


async def _one_connect(url: str, cookie: str) -> float:
    """Connect, wait for ``ready``, close; return the seconds until ``ready``."""
    started = time.perf_counter()
    async with connect(
        url,
        additional_headers={"Cookie": f"sessionid={cookie}"},
        compression=None,
        open_timeout=20,
        close_timeout=20,
    ) as ws:
        message = await asyncio.wait_for(ws.recv(), 20)
        ready = time.perf_counter()
        if message != "ready":
            raise RuntimeError(f"expected 'ready', got {message!r}")
    return ready - started


def heartbeats(http_url: str | None) -> int:
    """The heartbeats the presence server has started so far; 0 for the others."""
    if http_url is None:
        return 0
    with urllib.request.urlopen(f"{http_url}/heartbeats/", timeout=10) as reply:
        count: int = json.load(reply)["heartbeats"]
    return count


async def load(
    url: str,
    cookies: list[str],
    concurrency: int,
    warmup: float,
    seconds: float,
    server_pid: int,
    redis_url: str,
    http_url: str | None,
) -> Phase:
    """``concurrency`` clients churn for ``warmup + seconds``; only the window counts.

    A connect counts for latency when it started inside the window and finished
    before its end, and for throughput when it finished inside the window.
    ``http_url`` is the presence server's, whose heartbeats are counted.
    """
    import redis

    loop_start = time.perf_counter()
    window_start = loop_start + warmup
    window_end = window_start + seconds
    phase = Phase(seconds=seconds)
    redis_client = redis.Redis.from_url(redis_url)

    def cpu() -> tuple[float, float, float]:
        return (
            harness.process_cpu_seconds(server_pid),
            harness.redis_cpu_seconds(redis_client),
            time.process_time(),
        )

    async def sampler() -> None:
        await asyncio.sleep(window_start - time.perf_counter())
        before, beats_before = cpu(), await asyncio.to_thread(heartbeats, http_url)
        await asyncio.sleep(window_end - time.perf_counter())
        after, beats_after = cpu(), await asyncio.to_thread(heartbeats, http_url)
        phase.server_cpu, phase.redis_cpu, phase.client_cpu = (
            a - b for a, b in zip(after, before, strict=True)
        )
        phase.heartbeats = beats_after - beats_before

    async def client(n: int) -> None:
        cookie = cookies[n % len(cookies)]
        while time.perf_counter() < window_end:
            started = time.perf_counter()
            try:
                latency = await _one_connect(url, cookie)
            except Exception as exc:
                if window_start <= started:
                    phase.errors += 1
                    if phase.errors <= 3:
                        print(f"  client error: {exc!r}", file=sys.stderr)
                await asyncio.sleep(0.05)
                continue
            finished = time.perf_counter()
            if window_start <= finished <= window_end:
                phase.completed += 1
            if window_start <= started and started + latency <= window_end:
                phase.latencies.append(latency)

    try:
        await asyncio.gather(sampler(), *(client(n) for n in range(concurrency)))
    finally:
        redis_client.close()
    return phase


def leftovers(variant: str, redis_url: str, db: str) -> dict[str, int]:
    """What the disconnects left behind: layer group members and presence entries."""
    import redis

    client = redis.Redis.from_url(redis_url)
    found = {"layer_group": int(client.zcard(f"asgi:group:{GROUP}"))}
    if variant == "presence":
        from channels_presence.stores.redis import RedisStore

        store = RedisStore(redis_url)  # the default KEY_PREFIX, as the server's
        found["presence_group_size"] = store.group_size(GROUP)
        store.close()
    if variant == "peer":
        with sqlite3.connect(db) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM channels_presence_presence").fetchone()
        found["peer_presence_rows"] = int(count)
    client.delete(f"asgi:group:{GROUP}")
    client.close()
    return found


def run_variant(variant: str, args: argparse.Namespace, redis_url: str, tmp: str) -> dict[str, Any]:
    python = harness.peer_python() if variant == "peer" else sys.executable
    db = str(Path(tmp) / f"{variant}-{time.monotonic_ns()}.sqlite3")
    extra = {"BENCH_TTL": str(args.ttl)} if variant == "presence" else {}
    env = harness.server_env(variant, redis_url, db, **extra)
    # One user per client: nobody's connect supersedes another client's.
    cookies = harness.setup_database(python, env, args.concurrency)
    with harness.asgi_server(python, env) as server:
        url = f"ws://127.0.0.1:{server.port}/ws/"
        http_url = f"http://127.0.0.1:{server.port}" if variant == "presence" else None
        common = (server.pid, redis_url, http_url)
        loaded = asyncio.run(
            load(url, cookies, args.concurrency, args.warmup, args.seconds, *common)
        )
        unloaded = asyncio.run(load(url, cookies, 1, 0.5, args.unloaded_seconds, *common))
        time.sleep(1.0)  # let the last disconnect handlers finish
        left = leftovers(variant, redis_url, db)
    alone = work_alone(python, env, args)
    return {"loaded": loaded, "unloaded": unloaded, "left": left, "alone": alone}


def work_alone(python: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """The variant's connect + disconnect bookkeeping alone (``benchserver/work_alone.py``)."""
    out = subprocess.run(
        [
            python, "-m", "benchserver.work_alone", "--seconds", str(args.alone_seconds),
            "--concurrency", str(args.concurrency),
        ],
        cwd=harness.BENCH_DIR, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=50, help="clients at once (default 50)")
    parser.add_argument("--seconds", type=float, default=6.0, help="loaded window per round")
    parser.add_argument("--warmup", type=float, default=1.5, help="loaded warm-up per round")
    parser.add_argument("--unloaded-seconds", type=float, default=4.0, help="one-client window")
    parser.add_argument(
        "--ttl", type=float, default=6.0, help="presence TTL, s; it beats every TTL / 3 (default 6)"
    )
    parser.add_argument("--alone-seconds", type=float, default=2.5, help="bookkeeping-only window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if "peer" in variants:
        try:
            harness.peer_python()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"skipping the peer: its environment could not be made ({exc})", file=sys.stderr)
            variants.remove("peer")

    totals: dict[str, dict[str, Any]] = {
        v: {"loaded": Phase(), "unloaded": Phase(), "left": {}, "alone": []} for v in variants
    }
    started = time.monotonic()
    with harness.redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        info = harness.machine_info(redis_url)
        for round_no in range(1, args.rounds + 1):
            for variant in variants:
                print(f"round {round_no}/{args.rounds}: {variant} ...", file=sys.stderr, flush=True)
                result = run_variant(variant, args, redis_url, tmp)
                totals[variant]["loaded"].merge(result["loaded"])
                totals[variant]["unloaded"].merge(result["unloaded"])
                totals[variant]["alone"].append(result["alone"])
                for key, value in result["left"].items():
                    totals[variant]["left"][key] = totals[variant]["left"].get(key, 0) + value

    figures: dict[str, Any] = {
        "machine": info,
        "concurrency": args.concurrency,
        "ttl": args.ttl,
        "heartbeat": args.ttl / 3,
        "seconds": args.seconds,
        "unloaded_seconds": args.unloaded_seconds,
        "rounds": args.rounds,
    }
    rows = []
    for variant in variants:
        loaded, unloaded = totals[variant]["loaded"], totals[variant]["unloaded"]
        fig = {
            "connects_per_s": round(loaded.rate, 1),
            "p50_ms": round(harness.percentile(loaded.latencies, 50) * 1000, 2),
            "p99_ms": round(harness.percentile(loaded.latencies, 99) * 1000, 2),
            "unloaded_p50_ms": round(harness.percentile(unloaded.latencies, 50) * 1000, 2),
            "unloaded_p99_ms": round(harness.percentile(unloaded.latencies, 99) * 1000, 2),
            "connects": loaded.completed,
            "server_cpu_ms_per_connect": round(loaded.cpu_ms_per_connect("server"), 3),
            "redis_cpu_ms_per_connect": round(loaded.cpu_ms_per_connect("redis"), 3),
            "client_cpu_ms_per_connect": round(loaded.cpu_ms_per_connect("client"), 3),
            "errors": loaded.errors + unloaded.errors,
            "heartbeats_loaded": loaded.heartbeats,
            "heartbeats_unloaded": unloaded.heartbeats,
            "left_behind": totals[variant]["left"],
        }
        figures[variant] = fig
        rows.append([
            variant, fig["connects_per_s"], fig["p50_ms"], fig["p99_ms"],
            fig["unloaded_p50_ms"], fig["unloaded_p99_ms"], fig["server_cpu_ms_per_connect"],
            fig["redis_cpu_ms_per_connect"], fig["client_cpu_ms_per_connect"],
            fig["connects"], fig["errors"],
            f"{loaded.heartbeats} / {unloaded.heartbeats}" if variant == "presence" else "-",
            ", ".join(f"{k}={v}" for k, v in fig["left_behind"].items()),
        ])  # fmt: skip
    harness.print_table(
        f"Connection churn: connect + join '{GROUP}' + disconnect, {args.concurrency} clients "
        f"at once (loaded, {args.rounds} x {args.seconds:g} s) and 1 client (unloaded, "
        f"{args.rounds} x {args.unloaded_seconds:g} s); presence TTL {args.ttl:g} s, "
        f"heartbeat every {args.ttl / 3:g} s",
        ["variant", "connects/s", "p50 ms", "p99 ms", "1-client p50 ms", "1-client p99 ms",
         "server CPU ms/conn", "Redis CPU ms/conn", "client CPU ms/conn",
         "connects", "errors", "heartbeats (loaded / 1-client)", "left behind after"],
        rows,
    )  # fmt: skip

    alone_rows = []
    for variant in variants:
        runs = totals[variant]["alone"]
        alone = {
            key: round(sum(r[key] for r in runs) / len(runs), 3)
            for key in ("cycles_per_s", "connect_p50_ms", "disconnect_p50_ms")
        }
        figures[variant]["alone"] = alone
        alone_rows.append([
            variant, alone["cycles_per_s"], alone["connect_p50_ms"], alone["disconnect_p50_ms"]
        ])  # fmt: skip
    harness.print_table(
        f"The bookkeeping alone (no websocket, no HTTP): connect + disconnect as each "
        f"consumer does them, {args.concurrency} tasks at once, one event loop "
        f"(mean of {args.rounds} x {args.alone_seconds:g} s)",
        ["variant", "cycles/s", "connect p50 ms", "disconnect p50 ms"],
        alone_rows,
    )

    ratios: dict[str, float] = {}
    if "bare" in figures and "presence" in figures:
        bare, pres = figures["bare"], figures["presence"]
        ratios["presence_p50_over_bare"] = round(pres["p50_ms"] / bare["p50_ms"], 3)
        ratios["presence_unloaded_p50_over_bare"] = round(
            pres["unloaded_p50_ms"] / bare["unloaded_p50_ms"], 3
        )
        ratios["presence_throughput_over_bare"] = round(
            pres["connects_per_s"] / bare["connects_per_s"], 3
        )
        ratios["presence_server_cpu_over_bare"] = round(
            pres["server_cpu_ms_per_connect"] / bare["server_cpu_ms_per_connect"], 3
        )
    if "presence" in figures and "peer" in figures:
        ratios["presence_throughput_over_peer"] = round(
            figures["presence"]["connects_per_s"] / figures["peer"]["connects_per_s"], 2
        )
    if "presence" in figures and "peer" in figures:
        ratios["presence_alone_cycles_over_peer"] = round(
            figures["presence"]["alone"]["cycles_per_s"] / figures["peer"]["alone"]["cycles_per_s"],
            2,
        )
    if "bare" in figures and "peer" in figures:
        ratios["bare_throughput_over_peer"] = round(
            figures["bare"]["connects_per_s"] / figures["peer"]["connects_per_s"], 2
        )
    if ratios:
        harness.print_table(
            "Ratios (target: presence p50 <= 1.20 x bare; presence >= 10 x peer connects/s)",
            ["ratio", "value"],
            [[k, v] for k, v in ratios.items()],
        )
    figures["ratios"] = ratios
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\n(elapsed {figures['elapsed_s']} s)")
    harness.emit("churn", figures)


if __name__ == "__main__":
    main()
