"""The reconnect storm: 1,000 sockets drop at once and come back within a second.

Two uvicorn servers, 100 users with 10 sockets each (``MAX_SESSIONS=None``),
spread over both. Every socket's TCP connection is aborted at the same instant
(a network blip: no close handshake, each server sees 1,000 connections lost)
and each browser reconnects after a random delay under one second, onto either
server. Then the counts must be exact again (1,000 in the lobby, 100 users,
each user's 10 new channels and none of the old), and not because the old
entries expired: ``TTL`` is 30 s, far longer than the test waits, so every
dropped socket must have been removed by its own disconnect.

Responsiveness: each server runs a loop-lag monitor (``/loop-lag/``: the worst
overshoot of a 20 ms timer), and a thread probes ``/loop-lag/`` on both servers
every 50 ms, timing the round trip. Both maxima are printed. The bounds asserted
are generous on purpose (this 2-core machine runs both servers, Redis and 1,000
clients, and other work may share it): a stalled loop is one that stops for
seconds, and the bound is several times what the storm normally costs.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import (
    AsgiServer,
    Cluster,
    LiveClient,
    Login,
    eventually,
    http_request,
    login_many,
    raise_fd_limit,
)

pytestmark = [pytest.mark.soak, pytest.mark.e2e, pytest.mark.redis]

SEED = 1000
USERS = 100
PER_USER = 10
SOCKETS = USERS * PER_USER
TTL = 30.0
#: Seconds over which the browsers come back.
RECONNECT_WINDOW = 1.0
OPEN_TIMEOUT = 30.0
#: The worst event-loop stall allowed, in seconds. Idle, a loop answers within
#: milliseconds; this storm on two cores shared by both servers, Redis and the
#: 1,000 clients has measured up to ~2.5 s (a batch of hundreds of handshakes,
#: session lookups and store calls handled in one loop iteration). Twice that:
#: the assertion fails only when a loop really stops, never on a busy machine.
MAX_LOOP_LAG = 5.0
#: The worst probe round trip allowed. It adds the probe's own HTTP cost and the
#: probe thread's share of the test process's CPU (which also drives the 1,000
#: clients); measured up to ~6 s. A server that stopped answering would exceed it.
MAX_PROBE_RTT = 15.0


class Probe:
    """A thread that times ``GET /loop-lag/`` on each server every 50 ms."""

    def __init__(self, servers: list[AsgiServer]) -> None:
        self.servers = servers
        self.worst = dict.fromkeys((s.name for s in servers), 0.0)
        self.samples = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for server in self.servers:
                start = time.monotonic()
                try:
                    status = http_request(f"{server.url}/loop-lag/", timeout=30).status
                except OSError as exc:
                    self.errors.append(f"{server.name}: {exc!r}")
                    continue
                took = time.monotonic() - start
                if status != 200:
                    self.errors.append(f"{server.name}: HTTP {status}")
                self.worst[server.name] = max(self.worst[server.name], took)
                self.samples += 1


async def open_all(
    targets: list[tuple[AsgiServer, Login]], delays: list[float]
) -> list[LiveClient]:
    """Open one socket per target, each after its delay; every one must be accepted."""

    async def one(server: AsgiServer, login: Login, delay: float) -> LiveClient:
        await asyncio.sleep(delay)
        client = await LiveClient.open(server, login, timeout=OPEN_TIMEOUT)
        assert client.hello is not None, f"{login.username} refused: {client.close_code}"
        return client

    return list(
        await asyncio.gather(
            *(one(s, login, d) for (s, login), d in zip(targets, delays, strict=True))
        )
    )


def expected(clients: list[LiveClient]) -> dict[str, Any]:
    users = sorted({c.login.user for c in clients if c.login})
    return {
        "lobby": {"size": len(clients), "users": len(users), "members": users},
        "users": {
            str(pk): sorted(c.channel for c in clients if c.login and c.login.user == pk)
            for pk in users
        },
    }


async def counts(server: AsgiServer, user_pks: list[int]) -> dict[str, Any] | None:
    query = "group=lobby&" + "&".join(f"user={pk}" for pk in user_pks)
    response = await server.aget(f"/presence/snapshot/?{query}")
    if response.status != 200:
        return None
    seen = response.json()
    return {
        "lobby": seen["groups"]["lobby"],
        "users": {u: sorted(chs) for u, chs in seen["users"].items()},
    }


def differences(seen: dict[str, Any] | None, want: dict[str, Any]) -> list[str]:
    """A short account of where the counts differ from the truth; empty when exact."""
    if seen is None:
        return ["no snapshot (HTTP error)"]
    out = []
    if seen["lobby"] != want["lobby"]:
        lobby, expected_lobby = seen["lobby"], want["lobby"]
        out.append(
            f"lobby size {lobby['size']} (want {expected_lobby['size']}), "
            f"users {lobby['users']} (want {expected_lobby['users']})"
        )
    stale = sum(len(set(seen["users"][u]) - set(chs)) for u, chs in want["users"].items())
    absent = sum(len(set(chs) - set(seen["users"][u])) for u, chs in want["users"].items())
    if stale or absent:
        out.append(
            f"user_channels: {stale} channels of dropped sockets, {absent} live ones missing"
        )
    return out


async def test_a_thousand_sockets_dropped_at_once_and_back_within_a_second_count_exactly(
    start_cluster: Callable[..., Cluster], create_users: Callable[..., dict[str, int]]
) -> None:
    """See the module docstring."""
    began = time.monotonic()
    limit = raise_fd_limit(4 * SOCKETS + 1000)
    assert limit >= 2 * SOCKETS + 200, f"RLIMIT_NOFILE is {limit}: too low for {SOCKETS} sockets"
    rng = random.Random(SEED)
    names = [f"storm{i:03d}" for i in range(USERS)]
    pks = await asyncio.to_thread(create_users, names)
    user_pks = sorted(pks.values())
    cluster = await asyncio.to_thread(start_cluster, {"MAX_SESSIONS": None, "TTL": TTL})
    servers = list(cluster)
    logins = await asyncio.to_thread(login_many, servers[0], names)
    targets = [(servers[i % 2], logins[i % USERS]) for i in range(SOCKETS)]
    figures: dict[str, Any] = {}
    clients: list[LiveClient] = []
    probe = Probe(servers)
    try:
        started = time.monotonic()
        # The first arrival in waves of 100: building the state is not under test.
        for i in range(0, SOCKETS, 100):
            clients += await open_all(targets[i : i + 100], [0.0] * 100)
        figures["initial_connect_s"] = round(time.monotonic() - started, 1)
        want = expected(clients)
        await eventually(
            lambda: counts(servers[1], user_pks),
            lambda got: not differences(got, want),
            timeout=10,
            what="1000 counted before the storm",
        )
        for server in servers:
            await server.aget_json("/loop-lag/?reset=1")

        with probe:
            await asyncio.sleep(0.5)  # a baseline under no load
            figures["probe_rtt_baseline_max_s"] = {k: round(v, 3) for k, v in probe.worst.items()}
            dropped_at = time.monotonic()
            for client in clients:
                assert client.ws is not None
                client.ws.transport.abort()
            again = [(rng.choice(servers), c.login) for c in clients]
            delays = [rng.uniform(0, RECONNECT_WINDOW) for _ in clients]
            clients = await open_all(again, delays)  # type: ignore[arg-type]
            figures["all_back_after_s"] = round(time.monotonic() - dropped_at, 2)
            want = expected(clients)
            try:
                await eventually(
                    lambda: counts(servers[0], user_pks),
                    lambda got: not differences(got, want),
                    timeout=10,
                    interval=0.1,
                    what="exact counts after the storm",
                )
            except AssertionError:
                diff = differences(await counts(servers[0], user_pks), want)
                raise AssertionError(
                    f"not exact 10 s after the storm (TTL={TTL}s, so dropped sockets must be "
                    f"removed by their disconnects, not by expiry): {diff}"
                ) from None
            figures["exact_after_s"] = round(time.monotonic() - dropped_at, 2)
            await asyncio.sleep(0.5)
        for server in servers:
            assert differences(await counts(server, user_pks), want) == [], server.name
        lags = {s.name: (await s.aget_json("/loop-lag/"))["max_lag"] for s in servers}
        figures["loop_lag_max_s"] = {k: round(v, 3) for k, v in lags.items()}
        assert probe.errors == [], probe.errors[:5]
        assert max(lags.values()) < MAX_LOOP_LAG, f"an event loop stalled: {lags}"
        worst_rtt = max(probe.worst.values())
        assert worst_rtt < MAX_PROBE_RTT, f"a server stopped answering: {probe.worst}"
    finally:
        figures.update(
            probe_rtt_max_s={k: round(v, 3) for k, v in probe.worst.items()},
            probe_samples=probe.samples,
        )
        if "loop_lag_max_s" not in figures:
            figures["loop_lag_max_s"] = {
                s.name: round((await s.aget_json("/loop-lag/"))["max_lag"], 3) for s in servers
            }
        await asyncio.gather(*(c.close() for c in clients))
        figures["wall_s"] = round(time.monotonic() - began, 1)
        sys.stderr.write(f"\nstorm figures: {figures}\n")
    print(f"\nstorm figures: {figures}")
