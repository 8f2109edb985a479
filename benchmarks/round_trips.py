"""Redis round trips per connect, per disconnect and per heartbeat interval.

Run: ``python benchmarks/round_trips.py`` (about a minute).

A real uvicorn server with ``PresenceConsumerMixin``, real websocket clients
and real logged-in users. The presence store gets a Redis of its own
(``CACHES["default"]``); the channel layer and the session cache share a
second Redis, so channels_redis's commands (ZADD/ZREM on the group,
BZPOPMIN on each consumer's channel) and the session GET never reach the
counted server: they are excluded by construction, and shown for reference.

The figures come from the presence Redis's ``INFO commandstats`` deltas. That
count includes the commands a Lua script runs inside itself, so the slow log
(threshold 0, every command) splits them: an entry whose client is ``?:0`` ran
inside a script, in the same round trip as the EVALSHA that started it. A
round trip is a command a client sent. The probe's own INFO/SLOWLOG/CONFIG
calls run under the client name ``bench-probe`` and are left out.

Targets: 1 round trip per connect, 1 per disconnect, 1 per heartbeat interval
per process whatever the number of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import redis
from websockets.asyncio.client import ClientConnection, connect

PROBE = "bench-probe"
# Longer than LEAVE_GRACE (3 s by default): departures have settled after it.
GRACE = 4.0
PROBE_COMMANDS = ("info", "slowlog", "config", "client")
SOCKET_SETUP = ("hello", "client", "select", "auth")


def script_name(sha: str) -> str:
    """The store's script a SHA1 belongs to (``connect``, ``refresh`` ...)."""
    from channels_presence.stores.redis import _SCRIPTS

    for script in _SCRIPTS.values():
        if script.sha == sha:
            return script.name
    return sha[:8]


class Probe:
    """Counts what a Redis server executes between two snapshots."""

    def __init__(self, url: str, split: bool) -> None:
        self.client = redis.Redis.from_url(url, client_name=PROBE)
        self.split = split
        if split:
            self.client.config_set("slowlog-log-slower-than", 0)
            self.client.config_set("slowlog-max-len", 200_000)
        self._before: Counter[str] = Counter()

    def _calls(self) -> Counter[str]:
        stats = self.client.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})

    def start(self) -> None:
        if self.split:
            self.client.slowlog_reset()
        self._before = self._calls()

    def stop(self) -> dict[str, Any]:
        """Commands since :meth:`start`: all (commandstats), and top-level vs in-script."""
        after = self._calls()
        delta = Counter(
            {
                name: n
                for name, n in (after - self._before).items()
                if name.split("|")[0] not in PROBE_COMMANDS
            }
        )
        result: dict[str, Any] = {"commandstats": dict(delta), "total": sum(delta.values())}
        if self.split:
            top: Counter[str] = Counter()
            inner: Counter[str] = Counter()
            for entry in self.client.slowlog_get(200_000):
                if entry.get("client_name") == PROBE.encode():
                    continue
                words = entry["command"].split()
                name = words[0].decode().lower() if words else "?"
                if name == "evalsha" and len(words) > 1:
                    name = f"evalsha:{script_name(words[1].decode())}"
                target = inner if entry.get("client_address") == b"?:0" else top
                target[name] += 1
            result["top_level"] = dict(top)
            result["in_script"] = dict(inner)
            # A new pooled socket starts with HELLO (and CLIENT SETINFO): a cost of
            # the pool growing under concurrency, not of the operation; shown apart.
            result["socket_setup"] = sum(n for name, n in top.items() if name in SOCKET_SETUP)
            result["round_trips"] = sum(top.values()) - result["socket_setup"]
            # Both sources must count the same commands (the probe's names aside).
            logged = top + inner
            result["agrees"] = result["total"] == sum(
                n for name, n in logged.items() if name.split(":")[0] not in PROBE_COMMANDS
            )
        return result

    def close(self) -> None:
        self.client.close()


async def open_ready(url: str, cookie: str) -> ClientConnection:
    ws = await connect(url, additional_headers={"Cookie": f"sessionid={cookie}"}, compression=None)
    message = await asyncio.wait_for(ws.recv(), 20)
    if message != "ready":
        raise RuntimeError(f"expected 'ready', got {message!r}")
    return ws


async def connect_disconnect(
    url: str, cookies: list[str], n: int, presence: Probe, layer: Probe, grace: float
) -> dict[str, Any]:
    """Connect ``n`` clients one by one, then close them one by one; count each phase."""
    presence.start()
    layer.start()
    sockets = [await open_ready(url, cookies[i % len(cookies)]) for i in range(n)]
    await asyncio.sleep(0.3)  # the mixin's connect has finished before ``ready``; be sure
    connects = (presence.stop(), layer.stop())
    presence.start()
    layer.start()
    for ws in sockets:
        await ws.close()
    await asyncio.sleep(grace)  # server-side disconnect handlers, and LEAVE_GRACE
    disconnects = (presence.stop(), layer.stop())
    return {"connect": connects, "disconnect": disconnects}


async def heartbeats(
    url: str,
    cookies: list[str],
    n: int,
    presence: Probe,
    intervals: int,
    heartbeat: float,
    grace: float,
) -> dict[str, Any]:
    """Hold ``n`` idle connections open for ``intervals`` heartbeats; count the commands."""
    sockets = [await open_ready(url, cookies[i % len(cookies)]) for i in range(n)]
    await asyncio.sleep(heartbeat * 1.5)  # at least one heartbeat has seen them all
    presence.start()
    started = time.monotonic()
    await asyncio.sleep(heartbeat * intervals)
    counted = presence.stop()
    elapsed = time.monotonic() - started
    for ws in sockets:
        await ws.close()
    await asyncio.sleep(grace)  # the departures settle before the next window opens
    counted["intervals"] = elapsed / heartbeat
    return counted


def per(result: dict[str, Any], n: float, key: str = "round_trips") -> float:
    return round(result[key] / n, 3) if n else float("nan")


def describe(counts: dict[str, int]) -> str:
    def label(name: str) -> str:
        command, _, script = name.partition(":")
        return f"{command.upper()}({script})" if script else command.upper()

    return " ".join(f"{label(k)}x{v}" for k, v in sorted(counts.items())) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="connections per measurement")
    parser.add_argument("--ttl", type=float, default=3.0, help="presence TTL for the heartbeat run")
    parser.add_argument("--intervals", type=int, default=6, help="heartbeats counted per size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    heartbeat = args.ttl / 3
    started = time.monotonic()

    rows_ops, rows_hb, figures = [], [], {"sizes": sizes, "ttl": args.ttl, "heartbeat": heartbeat}
    with (
        harness.redis_server() as presence_url,
        harness.redis_server() as layer_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        figures["machine"] = harness.machine_info(presence_url)
        python = sys.executable
        users = max(sizes)
        for run, ttl in (("ops", 300.0), ("heartbeat", args.ttl)):
            # Connect and disconnect are counted with a long TTL, so no heartbeat
            # falls into their windows; heartbeats with the short one.
            env = harness.server_env(
                "presence",
                presence_url,
                str(Path(tmp) / f"{run}.sqlite3"),
                BENCH_LAYER_REDIS_URL=layer_url,
                BENCH_TTL=str(ttl),
            )
            cookies = harness.setup_database(python, env, users)
            presence = Probe(presence_url, split=True)
            layer = Probe(layer_url, split=False)
            try:
                with harness.asgi_server(python, env) as server:
                    url = f"ws://127.0.0.1:{server.port}/ws/"
                    # Warm up: scripts loaded, pooled sockets opened, imports done.
                    asyncio.run(connect_disconnect(url, cookies, 3, presence, layer, GRACE))
                    for n in sizes:
                        print(f"{run}: {n} connection(s) ...", file=sys.stderr, flush=True)
                        if run == "ops":
                            res = asyncio.run(
                                connect_disconnect(url, cookies, n, presence, layer, GRACE)
                            )
                            for op in ("connect", "disconnect"):
                                pres, lay = res[op]
                                figures[f"{op}_{n}"] = {"presence": pres, "layer": lay}
                                rows_ops.append([
                                    op, n, per(pres, n), pres["socket_setup"],
                                    describe(pres["top_level"]),
                                    describe(pres["in_script"]), per(lay, n, "total"),
                                    describe(lay["commandstats"]),
                                ])  # fmt: skip
                        else:
                            res = asyncio.run(
                                heartbeats(
                                    url, cookies, n, presence, args.intervals, heartbeat, GRACE
                                )
                            )
                            figures[f"heartbeat_{n}"] = res
                            rows_hb.append([
                                n, round(res["intervals"], 2), res["round_trips"],
                                res["socket_setup"], per(res, res["intervals"]),
                                describe(res["top_level"]),
                                describe(res["in_script"]),
                            ])  # fmt: skip
            finally:
                presence.close()
                layer.close()

    harness.print_table(
        "Round trips to the presence Redis per connect / disconnect (target: 1 each)",
        ["operation", "connections", "round trips each", "new sockets", "sent (all)",
         "run inside the scripts",
         "layer+session cmds each (excluded)", "layer+session commands (all)"],
        rows_ops,
    )  # fmt: skip
    harness.print_table(
        f"Round trips per heartbeat interval, one server process, HEARTBEAT {heartbeat:g} s "
        f"(TTL {args.ttl:g} s; target: 1 whatever the connections)",
        ["connections", "intervals", "round trips", "new sockets", "per interval", "sent (all)",
         "run inside the scripts"],
        rows_hb,
    )  # fmt: skip
    summary = {
        "connect_round_trips": max(per(figures[f"connect_{n}"]["presence"], n) for n in sizes),
        "disconnect_round_trips": max(
            per(figures[f"disconnect_{n}"]["presence"], n) for n in sizes
        ),
        "heartbeat_round_trips_per_interval": max(
            per(figures[f"heartbeat_{n}"], figures[f"heartbeat_{n}"]["intervals"]) for n in sizes
        ),
    }
    settles = [
        figures[f"disconnect_{n}"]["presence"]["top_level"].get("evalsha:settle", 0) / n
        for n in sizes
    ]
    summary["disconnect_script_round_trips"] = max(
        figures[f"disconnect_{n}"]["presence"]["top_level"].get("evalsha:disconnect", 0) / n
        for n in sizes
    )
    summary["deferred_settle_round_trips_per_disconnect"] = round(max(settles), 3)
    figures["summary"] = summary
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\nworst case: {summary}  (elapsed {figures['elapsed_s']} s)")
    harness.emit("round_trips", figures)


if __name__ == "__main__":
    main()
