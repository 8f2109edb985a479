"""Presence at production scale: 10,000 to 1,000,000 connections in one Redis.

Run: ``python benchmarks/scale.py [--sizes 10000,100000,1000000] [--json out.json]``
(``--store old`` picks the store adapter; ``--merge a.json b.json`` joins earlier runs).

The store is driven through its API directly, no websockets: connections spread
over 20 process identities, each with a fixed channels_redis-style prefix
(``specific.<32 hex>!``, 42 chars) and 32 hex after it (74 chars in all), a
32-character Django-like session key, one integer user pk (as a string) per
connection, every connection in group ``lobby``. The workload never calls the
store itself: a driver (``OldStoreDriver``, one per store protocol) turns its
steps (connect, heartbeat, join, sweep ...) into store calls.

Each size runs on a fresh ``redis-server`` of its own (nothing on disk,
``slowlog-log-slower-than 0``) and every process identity keeps beating every
``--heartbeat`` seconds throughout, as servers do, so nothing expires unless a
phase wants it to. Sizes above ``--compress-above`` (100,000) run in compressed
time instead: one Python process cannot send 20 processes' heartbeats of
50,000 connections every 20 s (with today's store Redis alone needs about that
long for them), so the store gets a TTL of ``--compressed-ttl`` (2 h), no
keep-alive beats are sent, and the windows below are compressed as said.
Each heartbeat carries its process's audit slice (``AUDIT_BATCH`` of its
connections, in turn), as the real heartbeat does.
How each figure is measured:

- longest script: ``SLOWLOG`` reset before the phase, the longest
  ``EVALSHA``/``FCALL`` entry after it, with the script's name (and the longest
  of each script). The threshold starts at ``--slowlog-floor`` (50 us), not 0:
  Redis logs every command a script runs too, and at 0 that logging made a
  heartbeat a quarter slower. While the phase runs it is raised to the
  shortest per-script maximum seen, so the log stays small.
- PING latency: a separate process pings in a tight loop during one round of
  the 20 heartbeats (back to back), and also for 3 s while Redis is idle.
- Redis CPU: ``used_cpu_user + used_cpu_sys`` from ``INFO cpu`` over a
  real-time window of ``--cpu-intervals`` heartbeat intervals in which every
  process beats once per interval (staggered), minus the idle server's own
  CPU over 5 s, per second, scaled to 100,000 connections. Compressed: the 20
  beats of one interval back to back, their CPU over the 20 s they stand for.
- bytes per connection: ``used_memory`` after ``MEMORY PURGE`` (and
  ``SLOWLOG RESET``), filled minus empty (scripts loaded), over connections. For
  two groups the delta of joining every connection to one of 1,000 room groups
  is added.
- connect / disconnect: ``INFO commandstats`` usec of the store's scripts over
  ``--churn`` new connections, then over their disconnects, per call.
- count read: the same for ``group_size`` of ``lobby`` and of a 10-member group.
  ``group_members`` of ``lobby`` runs once, at the end of each size (after
  the dead process's sweep: 19/20 of the population).
- dead process: process 19 stops beating, the others go on; once its TTL has
  passed, the store's sweep removes everything expired: longest script, total
  client time. Compressed: its last heartbeat is sent by a second driver with
  a TTL of ``--compressed-dead-ttl`` (5 s), which then passes.

A client call that times out (the old store's 5 s socket timeout) is recorded
as such; the script goes on inside Redis, so the benchmark waits until Redis
answers again and reports the script's real length from ``SLOWLOG``. A script
still running after ``--stuck-limit`` seconds (``SCRIPT KILL`` cannot stop one
that wrote) has its server killed and started again.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import harness
import redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

PROCESSES = 20
LOBBY = "lobby"
TEN = "ten"
ROOMS = 1_000
PREFIX = "presence"
CHUNK = 1_000  # connections per pipeline while filling
GATHER = 100  # concurrent store calls during churn
SPECIAL_USER_BASE = 50_000_000  # user pks of the special cases, above any population
SPECIAL_INDEX = 10**12  # indices of connections outside the regular pattern
MB = 1024 * 1024
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
# Maps the bytes of a digest onto Django's session-key alphabet.
_SESSION_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
_SESSION_TABLE = bytes(_SESSION_ALPHABET[b % 36] for b in range(256))


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps the tables and the RESULT line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The workload ---------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    """One simulated websocket connection, as the workload knows it."""

    index: int
    process: int
    channel: str
    user: str
    session: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """The session policy of a deployment (``MAX_SESSIONS``, ``SESSION_SCOPE``)."""

    max_sessions: int | None = 1
    scope: str = "user"


def room(index: int) -> str:
    return f"room-{index % ROOMS}"


def _digest(salt: str, index: int, size: int) -> bytes:
    return hashlib.blake2b(f"{salt}:{index}".encode(), digest_size=size).digest()


class Population:
    """Who is connected where: the live connections of each process identity.

    Connection ``i`` lives on process ``i % 20``, belongs to user ``str(i + 1)``
    and has names derived from ``i``, so nothing but the indices is kept.
    Special connections (many tabs of one user ...) are kept whole.
    """

    def __init__(self) -> None:
        self.prefixes = [f"specific.{_digest('process', p, 16).hex()}!" for p in range(PROCESSES)]
        self.live: list[dict[int, Conn | None]] = [{} for _ in range(PROCESSES)]
        self.extra_groups: dict[int, tuple[str, ...]] = {}
        self.rooms = False  # whether every connection is also in its room group
        self.next_special = SPECIAL_INDEX

    def conn(self, i: int) -> Conn:
        process = i % PROCESSES
        groups: tuple[str, ...] = (LOBBY, room(i)) if self.rooms else (LOBBY,)
        return Conn(
            index=i,
            process=process,
            channel=self.prefixes[process] + _digest("channel", i, 16).hex(),
            user=str(i + 1),
            session=_digest("session", i, 32).translate(_SESSION_TABLE).decode(),
            groups=groups + self.extra_groups.get(i, ()),
        )

    def special(self, process: int, user: str, session: str, groups: tuple[str, ...]) -> Conn:
        """A connection outside the regular pattern (not yet added)."""
        i = self.next_special
        self.next_special += 1
        channel = self.prefixes[process] + _digest("special", i, 16).hex()
        return Conn(i, process, channel, user, session, groups)

    def add(self, conn: Conn) -> None:
        # Regular connections are made by conn(i) alone: keep just their index.
        regular = conn.index < SPECIAL_INDEX
        self.live[conn.process][conn.index] = None if regular else conn

    def remove(self, conn: Conn) -> None:
        self.live[conn.process].pop(conn.index, None)

    def replace(self, conn: Conn) -> None:
        """Record a connection's new groups (after a join)."""
        self.live[conn.process][conn.index] = conn

    def of(self, process: int) -> list[Conn]:
        return [c or self.conn(i) for i, c in self.live[process].items()]

    def regular(self) -> Iterator[Conn]:
        for live in self.live:
            for i, c in live.items():
                if c is None:
                    yield self.conn(i)

    def count(self) -> int:
        return sum(len(live) for live in self.live)


# Store drivers ----------------------------------------------------------------------


class StoreDriver(Protocol):
    """What the workload needs of a store: one adapter per store protocol.

    An adapter is made as ``Driver(url, ttl, policy)`` and registered in
    ``DRIVERS`` under the name ``--store`` selects. Calls that time out raise
    an exception whose chain holds a ``redis.exceptions.TimeoutError`` (or
    ``TimeoutError``). Every connection says its process (``conn.process``).
    """

    name: str

    def script_names(self) -> dict[str, str]:
        """SHA1 -> script name, to label ``EVALSHA`` entries of the slowlog."""
        ...

    async def prepare(self) -> None:
        """Load every script (before the empty-server memory baseline)."""
        ...

    async def fill(self, conns: Sequence[Conn]) -> None:
        """Connect many at once, as fast as the store allows (pipelined)."""
        ...

    async def connect(self, conn: Conn) -> None: ...

    async def disconnect(self, conn: Conn) -> None: ...

    async def heartbeat(self, process: int, conns: Sequence[Conn]) -> tuple[int, int]:
        """One heartbeat of ``process`` (whose live connections are ``conns``).

        Returns how many of ``conns`` the store reported closed (should be 0)
        and how many expired connections of other processes it swept.
        """
        ...

    async def join(self, conn: Conn, groups: tuple[str, ...]) -> None: ...

    async def join_many(self, pairs: Sequence[tuple[Conn, tuple[str, ...]]]) -> None:
        """Many joins at once (pipelined), for populations."""
        ...

    async def disconnect_user(self, user: str) -> int:
        """Remove every connection of ``user``; how many there were."""
        ...

    async def sweep_dead(self, process: int) -> int:
        """Remove what the dead ``process`` left behind (every expired entry)."""
        ...

    async def count_read(self, group: str) -> int:
        """Live connections in ``group``."""
        ...

    async def members_read(self, group: str) -> int:
        """Every member of ``group`` with its connections; how many users."""
        ...

    async def close(self) -> None: ...


class OldStoreDriver:
    """Today's store: ``RedisStore`` with ``SessionPolicy`` and ``arefresh``."""

    name = "old"

    def __init__(self, url: str, ttl: float, policy: Policy) -> None:
        from channels_presence.stores.base import Connection, SessionPolicy
        from channels_presence.stores.redis import _SCRIPTS, RedisStore

        self._connection_type = Connection
        self._scripts = _SCRIPTS
        self.store = RedisStore(url, prefix=PREFIX, ttl=ttl)
        self.policy = SessionPolicy(max_sessions=policy.max_sessions, scope=policy.scope)  # type: ignore[arg-type]
        # Pipelines of many scripts: a long timeout, the store's own stays 5 s.
        self._pipe_client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=600)

    def _connection(self, conn: Conn) -> Any:
        return self._connection_type(conn.channel, conn.user, conn.session, 0.0, conn.groups)

    def script_names(self) -> dict[str, str]:
        return {script.sha: name for name, script in self._scripts.items()}

    async def prepare(self) -> None:
        for script in self._scripts.values():
            self._pipe_client.script_load(script.source)

    def _pipelined(self, ops: Sequence[Any], check: Callable[[Any], bool]) -> None:
        # The store's own op builders give the exact keys and arguments its
        # methods send; pipelining them only saves the benchmark's waiting.
        pipe = self._pipe_client.pipeline(transaction=False)
        for op in ops:
            numkeys, argv = self.store._argv(op)
            pipe.evalsha(self._scripts[op.script].sha, numkeys, *argv)
        for reply in pipe.execute():
            if not check(reply):
                raise RuntimeError(f"the store refused a pipelined call: {str(reply)[:200]}")

    async def fill(self, conns: Sequence[Conn]) -> None:
        ops = [self.store._connect_op(self._connection(c), self.policy) for c in conns]
        self._pipelined(ops, lambda reply: str(reply).startswith("[true"))

    async def connect(self, conn: Conn) -> None:
        result = await self.store.aconnect(self._connection(conn), self.policy)
        if not result.accepted:
            raise RuntimeError(f"connect of {conn.channel} was refused")

    async def disconnect(self, conn: Conn) -> None:
        await self.store.adisconnect(conn.channel)

    async def heartbeat(self, process: int, conns: Sequence[Conn]) -> tuple[int, int]:
        result = await self.store.arefresh(tuple(map(self._connection, conns)), self.policy)
        return len(result.closed), len(result.expired)

    async def join(self, conn: Conn, groups: tuple[str, ...]) -> None:
        await self.store.ajoin(conn.channel, groups)

    async def join_many(self, pairs: Sequence[tuple[Conn, tuple[str, ...]]]) -> None:
        ops = [self.store._join_op(c.channel, groups) for c, groups in pairs]
        self._pipelined(ops, lambda reply: reply is not None)

    async def disconnect_user(self, user: str) -> int:
        return len(await self.store.adisconnect_user(user))

    async def sweep_dead(self, process: int) -> int:
        return len(await self.store.asweep())

    async def count_read(self, group: str) -> int:
        return await self.store.agroup_size(group)

    async def members_read(self, group: str) -> int:
        return len(await self.store.agroup_members(group))

    async def close(self) -> None:
        await self.store.aclose()
        self._pipe_client.close()


class NewStoreDriver:
    """Store v2: per-node liveness (``arefresh(node)``), one Redis function library."""

    name = "new"
    #: A count read is one plain command, not a script.
    read_commands = ("get",)

    def __init__(self, url: str, ttl: float, policy: Policy) -> None:
        from channels_presence.stores.base import AUDIT_BATCH, Connection, SessionPolicy
        from channels_presence.stores.redis import _SOURCE, LIBRARY, RedisStore

        self._audit_batch = AUDIT_BATCH

        self._connection_type = Connection
        self._library, self._source = LIBRARY, _SOURCE
        self.store = RedisStore(url, prefix=PREFIX, ttl=ttl)
        self.policy = SessionPolicy(
            max_sessions=policy.max_sessions,
            scope=policy.scope,  # type: ignore[arg-type]
            max_connections=None,
        )
        self._pipe_client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=600)
        #: Where each process's audit slice starts next.
        self._audited: dict[int, int] = {}

    @staticmethod
    def node(process: int) -> str:
        return f"bench{process:02d}"

    def _connection(self, conn: Conn) -> Any:
        # Connection i is the (i // 20 + 1)-th of its process: dense ids per node.
        seq = conn.index // PROCESSES + 1 if conn.index < SPECIAL_INDEX else conn.index
        return self._connection_type(
            conn.channel,
            conn.user,
            conn.session,
            0.0,
            conn.groups,
            conn_id=f"{self.node(conn.process)}.{seq:x}",
        )

    def script_names(self) -> dict[str, str]:
        ops = (
            "connect",
            "disconnect",
            "join",
            "leave",
            "set_meta",
            "beat",
            "restore",
            "repair",
            "disconnect_user",
            "reap",
            "settle",
            "retire",
            "fence",
            "user_connections",
            "group_connections",
            "groups",
        )
        return {f"{self._library}_{op}": op for op in ops}

    async def prepare(self) -> None:
        self._pipe_client.function_load(self._source, replace=True)

    def _pipelined(self, commands: Sequence[tuple[Any, ...]], check: Callable[[Any], bool]) -> None:
        pipe = self._pipe_client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        for reply in pipe.execute():
            if not check(reply):
                raise RuntimeError(f"the store refused a pipelined call: {str(reply)[:200]}")

    async def fill(self, conns: Sequence[Conn]) -> None:
        # The store's own first step of a connect: exactly what aconnect sends.
        commands = [
            next(self.store._connect_steps(self._connection(c), self.policy)).command for c in conns
        ]
        self._pipelined(commands, lambda reply: str(reply).startswith("[1"))
        self.store._live_nodes.update(self.node(c.process) for c in conns)

    async def connect(self, conn: Conn) -> None:
        result = await self.store.aconnect(self._connection(conn), self.policy)
        if not result.accepted:
            raise RuntimeError(f"connect of {conn.channel} was refused ({result.refused})")

    async def disconnect(self, conn: Conn) -> None:
        await self.store.adisconnect(self._connection(conn))

    async def heartbeat(self, process: int, conns: Sequence[Conn]) -> tuple[int, int]:
        # One call however many connections: of ``conns`` only the audit's
        # slice is sent (AUDIT_BATCH of them, in turn, as the heartbeat does).
        start, batch = self._audited.get(process, 0), self._audit_batch
        audit = tuple(map(self._connection, conns[start : start + batch]))
        self._audited[process] = 0 if start + batch >= len(conns) else start + batch
        result = await self.store.arefresh(self.node(process), audit)
        return len(result.closed), len(result.expired)

    async def join(self, conn: Conn, groups: tuple[str, ...]) -> None:
        await self.store.ajoin(self._connection(conn), groups)

    async def join_many(self, pairs: Sequence[tuple[Conn, tuple[str, ...]]]) -> None:
        commands = [
            self.store._groups_op("join", self._connection(c), groups).command
            for c, groups in pairs
        ]
        self._pipelined(commands, lambda reply: reply is not None)

    async def disconnect_user(self, user: str) -> int:
        return len(await self.store.adisconnect_user(user))

    async def sweep_dead(self, process: int) -> int:
        return len(await self.store.asweep())

    async def count_read(self, group: str) -> int:
        return await self.store.agroup_size(group)

    async def members_read(self, group: str) -> int:
        return len(await self.store.agroup_members(group))

    async def close(self) -> None:
        await self.store.aclose()
        self._pipe_client.close()


DRIVERS: dict[str, Callable[[str, float, Policy], StoreDriver]] = {
    "old": OldStoreDriver,
    "new": NewStoreDriver,
}


# Redis, the slowlog, the pinger ----------------------------------------------------------


class RedisServer:
    """A throwaway redis-server (nothing on disk) that can be killed and started again."""

    def __init__(self) -> None:
        self.port = harness.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="presence-scale-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    def start(self) -> None:
        args = [
            harness.redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.workdir,
            "--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        # SIGKILL: nothing to save, and a busy script would hold off SIGTERM.
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def client(self, timeout: float = 600.0) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=timeout)


@dataclass
class Slowest:
    """The longest presence script seen in a phase, and the longest of each script."""

    us: int = 0
    script: str = "-"
    by_script: dict[str, int] = field(default_factory=dict)


class SlowWatch:
    """The longest presence scripts in ``SLOWLOG`` over a phase.

    The log starts at ``floor_us``, not 0: Redis also logs every command a
    script runs, and logging each of those slowed a heartbeat by a quarter.
    After each look the threshold is raised to the shortest of the longest
    per script, so the log only ever holds candidates however long the phase.
    """

    def __init__(self, admin: redis.Redis, names: dict[str, str], floor_us: int) -> None:
        self.admin = admin
        self.names = names
        self.floor_us = floor_us
        self.by_script: dict[str, int] = {}

    def start(self) -> None:
        self.admin.config_set("slowlog-log-slower-than", self.floor_us)
        self.admin.slowlog_reset()
        self.by_script = {}

    def poll(self) -> Slowest:
        entries = self.admin.execute_command("SLOWLOG", "GET", "-1")
        self.admin.slowlog_reset()
        for entry in entries:
            duration, args = int(entry[2]), entry[3]
            command = str(args[0]).lower()
            if command not in SCRIPT_COMMANDS:
                continue  # the commands a script ran, or the benchmark's own
            name = str(args[1]) if len(args) > 1 else command
            name = self.names.get(name, name[:12] if command.startswith("eval") else name)
            self.by_script[name] = max(duration, self.by_script.get(name, 0))
        threshold = max(self.floor_us, min(self.by_script.values(), default=0))
        self.admin.config_set("slowlog-log-slower-than", threshold)
        if not self.by_script:
            return Slowest()
        name = max(self.by_script, key=lambda n: self.by_script[n])
        return Slowest(self.by_script[name], name, dict(self.by_script))


def script_stats(admin: redis.Redis, commands: Sequence[str] = SCRIPT_COMMANDS) -> tuple[int, int]:
    """Calls and microseconds of ``commands`` (every script, by default) so far
    (``INFO commandstats``)."""
    stats = admin.info("commandstats")
    calls = usec = 0
    for command in commands:
        entry = stats.get(f"cmdstat_{command}", {})
        calls += int(entry.get("calls", 0))
        usec += int(entry.get("usec", 0))
    return calls, usec


def run_pinger(url: str) -> None:
    """The pinger process: PING in a tight loop until SIGTERM, then print stats."""
    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    client = redis.Redis.from_url(url, socket_timeout=600)
    client.ping()
    print("ready", flush=True)
    samples: list[float] = []
    busy = 0
    while not stopping:
        started = time.perf_counter()
        try:
            client.ping()
        except ResponseError:
            busy += 1  # BUSY: a script ran past busy-reply-threshold
        samples.append(time.perf_counter() - started)
    stats = {
        "pings": len(samples),
        "max_ms": round(max(samples, default=0.0) * 1000, 3),
        "p99_ms": round(harness.percentile(samples, 99) * 1000, 3),
        "p50_ms": round(harness.percentile(samples, 50) * 1000, 3),
        "busy_replies": busy,
    }
    print(json.dumps(stats), flush=True)


class Pinger:
    """An unrelated Redis client in another process, pinging while a phase runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.process: subprocess.Popen[str] | None = None
        self.stats: dict[str, Any] = {}

    def __enter__(self) -> Pinger:
        args = [sys.executable, str(Path(__file__).resolve()), "--pinger", self.url]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the pinger did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats = self.stop()

    def stop(self) -> dict[str, Any]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=120)
        lines = out.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}


def is_timeout(exc: BaseException) -> bool:
    """Whether a store call failed because the client gave up waiting."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (RedisTimeoutError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Measuring ------------------------------------------------------------------------


@dataclass
class Outcome:
    """One measured step: its longest presence script and the caller's time."""

    us: int
    script: str
    client_s: float
    timed_out: bool = False
    #: The longest run of each script seen during the step, in microseconds.
    by_script: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, slow: Slowest, client_s: float = 0.0, timed_out: bool = False) -> Outcome:
        return cls(slow.us, slow.script, round(client_s, 3), timed_out, slow.by_script)

    def cell(self) -> str:
        if self.script == "-":
            return "none logged"
        ranked = sorted(self.by_script.items(), key=lambda item: -item[1]) or [
            (self.script, self.us)
        ]
        text = ", ".join(f"{us / 1000:,.2f} ms {name}" for name, us in ranked)
        if self.timed_out:
            text += " [client timed out >5 s]"
        return text


class Bench:
    """One Redis server, one driver, one population, and the measuring around them."""

    def __init__(self, args: argparse.Namespace, server: RedisServer) -> None:
        self.args = args
        self.server = server
        self.admin = server.client()
        self.ttl = args.ttl
        self.keepalive = args.heartbeat  # seconds between a process's heartbeats
        self.driver: StoreDriver = DRIVERS[args.store](server.url, args.ttl, Policy())
        self.watch = SlowWatch(self.admin, self.driver.script_names(), self.args.slowlog_floor)
        self.pop = Population()
        self.last_beat = [time.monotonic()] * PROCESSES
        self.dead: set[int] = set()
        self.lost = False  # the server was restarted: its population is gone
        self.timeouts = 0  # store calls whose client gave up
        self.notes: list[str] = []
        self.context = ""  # the size or case running, for notes

    async def use(self, policy: Policy, ttl: float | None = None) -> None:
        """Start over: a fresh server, a fresh driver with ``policy`` and ``ttl``."""
        await self.driver.close()
        self.server.restart()
        self.admin = self.server.client()
        self.ttl = ttl or self.args.ttl
        # With a longer TTL than --ttl (compressed time) beats only keep entries alive.
        self.keepalive = max(self.args.heartbeat, self.ttl / 3)
        self.driver = DRIVERS[self.args.store](self.server.url, self.ttl, policy)
        self.watch = SlowWatch(self.admin, self.driver.script_names(), self.args.slowlog_floor)
        self.pop = Population()
        self.last_beat = [time.monotonic()] * PROCESSES
        self.dead = set()
        self.lost = False
        await self.driver.prepare()

    # Redis recovering from a script that outlived the client ---------------------------

    def recover(self) -> None:
        """Wait until Redis answers again; past ``--stuck-limit``, restart it."""
        deadline = time.monotonic() + self.args.stuck_limit
        probe = self.server.client(timeout=2.0)
        while time.monotonic() < deadline:
            try:
                probe.ping()
                probe.close()
                return
            except (RedisTimeoutError, ResponseError, redis.ConnectionError):
                time.sleep(0.5)
        log("a script is still running: SCRIPT KILL, else restart the server")
        try:
            probe.script_kill()
            time.sleep(1)
            probe.ping()
            self.notes.append("a script outlived --stuck-limit and was killed")
            return
        except redis.RedisError:
            pass
        self.server.restart()
        self.admin = self.server.client()
        self.watch.admin = self.admin
        self.lost = True
        self.notes.append("a writing script outlived --stuck-limit: Redis was restarted")

    async def guarded(self, call: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """Run a store call; on a client timeout let Redis finish and go on."""
        try:
            return await call(), False
        except Exception as exc:
            if not is_timeout(exc):
                raise
            log("a store call timed out; waiting for Redis to finish the script")
            self.timeouts += 1
            self.recover()
            return None, True

    async def measure(self, call: Callable[[], Awaitable[Any]]) -> tuple[Outcome, Any]:
        """The longest script and the client's time of one step."""
        self.watch.start()
        timeouts = self.timeouts
        started = time.perf_counter()
        value, _ = await self.guarded(call)
        seconds = time.perf_counter() - started
        slow = self.watch.poll()
        timed_out = self.timeouts > timeouts
        return Outcome.of(slow, seconds, timed_out), value

    def used_memory(self) -> int:
        self.admin.slowlog_reset()  # the log's entries are memory too
        self.admin.execute_command("MEMORY", "PURGE")
        return int(self.admin.info("memory")["used_memory"])

    # Heartbeats ------------------------------------------------------------------

    async def beat(self, process: int) -> float:
        """One heartbeat of ``process``; the client's seconds."""
        started = time.monotonic()
        conns = self.pop.of(process)
        result, timed_out = await self.guarded(lambda: self.driver.heartbeat(process, conns))
        self.last_beat[process] = started
        if timed_out:
            self.notes.append(f"{self.context}: a heartbeat of {len(conns):,} timed out")
        elif result[0]:
            log(f"process {process}: the store closed {result[0]} of its connections")
        return time.monotonic() - started

    async def beat_due(self) -> None:
        """Beat every live process whose heartbeat interval has passed."""
        for p in range(PROCESSES):
            if p not in self.dead and time.monotonic() - self.last_beat[p] >= self.keepalive:
                await self.beat(p)

    # Populations ---------------------------------------------------------------------

    async def fill(
        self, conns: Sequence[Conn] | range, label: str, chunk_size: int = CHUNK
    ) -> dict[str, Any]:
        """Connect ``conns`` (or regular connections by index) in pipelined
        chunks, beating as due; stop at the time or memory budget."""
        started = last_report = time.monotonic()
        done = 0
        stopped = ""
        limit = self.args.memory_limit_gb * 1024 * MB
        for start in range(0, len(conns), chunk_size):
            chunk = [
                self.pop.conn(c) if isinstance(c, int) else c
                for c in conns[start : start + chunk_size]
            ]
            for conn in chunk:
                self.pop.add(conn)
            await self.driver.fill(chunk)
            done += len(chunk)
            self.watch.poll()
            await self.beat_due()
            now = time.monotonic()
            if now - last_report >= 10:
                last_report = now
                used = int(self.admin.info("memory")["used_memory"])
                rate = done / (now - started)
                log(f"{label}: {done:,}/{len(conns):,} ({rate:,.0f}/s, Redis {used / MB:,.0f} MB)")
                if used > limit:
                    stopped = f"stopped at {done:,}: Redis used {used / MB:,.0f} MB"
                elif now - started > self.args.fill_budget:
                    stopped = f"stopped at {done:,}: filling took over {self.args.fill_budget} s"
                if stopped:
                    self.notes.append(f"{label}: {stopped}")
                    log(stopped)
                    break
        seconds = time.monotonic() - started
        return {"connections": done, "seconds": round(seconds, 1), "stopped": stopped}

    async def fill_regular(self, count: int) -> dict[str, Any]:
        self.watch.start()
        figures = await self.fill(range(count), f"filling {count:,}")
        slow = self.watch.poll()
        figures["longest"] = asdict(Outcome.of(slow, figures["seconds"]))
        return figures


# The phases of one size -----------------------------------------------------------------


async def run_size(bench: Bench, size: int) -> dict[str, Any]:
    """Every per-size figure, on a fresh server."""
    args = bench.args
    # Past --compress-above one Python process cannot beat for 20 processes in
    # real time: a long TTL keeps everyone alive instead (see the docstring).
    compressed = size > args.compress_above
    bench.context = f"size {size:,}"
    await bench.use(Policy(), ttl=args.compressed_ttl if compressed else args.ttl)
    # The empty server's own CPU (cron, expiry), subtracted from the heartbeats'.
    idle0, t0 = harness.redis_cpu_seconds(bench.admin), time.monotonic()
    await asyncio.sleep(5)
    idle_rate = (harness.redis_cpu_seconds(bench.admin) - idle0) / (time.monotonic() - t0)
    empty = bench.used_memory()
    log(f"size {size:,}: filling")
    fill = await bench.fill_regular(size)
    filled = fill["connections"]
    one_group = bench.used_memory()
    out: dict[str, Any] = {"connections": filled, "per_process": filled // PROCESSES}
    out["time"] = "compressed" if compressed else "real time"
    out["ttl_s"] = bench.ttl
    out["fill"] = fill
    out["memory"] = {
        "used_memory_mb": round(one_group / MB, 1),
        "bytes_per_connection_one_group": round((one_group - empty) / filled, 1),
    }
    # Ten of them form a 10-member group, the count read's reference.
    for conn in bench.pop.of(0)[:10]:
        await bench.driver.join(conn, (TEN,))
        bench.pop.extra_groups[conn.index] = (TEN,)

    # Heartbeats: one round of the 20 processes back to back, a pinger watching.
    log(f"size {size:,}: heartbeats")
    with Pinger(bench.server.url) as idle:
        await asyncio.sleep(3)
    bench.watch.start()
    beat_seconds = []
    with Pinger(bench.server.url) as busy:
        for p in range(PROCESSES):
            beat_seconds.append(await bench.beat(p))
    slow = bench.watch.poll()
    out["heartbeats"] = {
        "longest": asdict(Outcome.of(slow, sum(beat_seconds))),
        "client_max_s": round(max(beat_seconds), 3),
        "ping_during": busy.stats,
        "ping_idle": idle.stats,
    }

    # Reads: count reads at this population and at 10 members, Redis time per call.
    log(f"size {size:,}: reads")
    await bench.beat_due()
    bench.watch.start()
    reads: dict[str, float] = {}
    # The old store counts with a script, the new one with one GET.
    read_commands = getattr(bench.driver, "read_commands", SCRIPT_COMMANDS)
    for group in (LOBBY, TEN):
        calls, usec = script_stats(bench.admin, read_commands)
        for _ in range(args.reads):
            counted = await bench.driver.count_read(group)
        calls2, usec2 = script_stats(bench.admin, read_commands)
        reads[group] = (usec2 - usec) / max(1, calls2 - calls)
        expected = filled if group == LOBBY else 10
        if counted != expected:
            bench.notes.append(f"size {size}: group_size({group}) = {counted}, not {expected}")
    slow = bench.watch.poll()
    out["reads"] = {
        "longest": asdict(Outcome.of(slow)),
        "count_us_at_size": round(reads[LOBBY], 2),
        "count_us_at_10": round(reads[TEN], 2),
        "ratio": round(reads[LOBBY] / reads[TEN], 2),
    }

    # Churn: new connections on top of the population, then their disconnects.
    log(f"size {size:,}: churn")
    await bench.beat_due()
    churners = [bench.pop.conn(i) for i in range(size, size + args.churn)]
    for conn in churners:
        bench.pop.add(conn)
    bench.watch.start()
    stats0 = script_stats(bench.admin)
    for start in range(0, len(churners), GATHER):
        await asyncio.gather(*map(bench.driver.connect, churners[start : start + GATHER]))
    stats1 = script_stats(bench.admin)
    for start in range(0, len(churners), GATHER):
        await asyncio.gather(*map(bench.driver.disconnect, churners[start : start + GATHER]))
    stats2 = script_stats(bench.admin)
    for conn in churners:
        bench.pop.remove(conn)
    slow = bench.watch.poll()
    out["churn"] = {
        "longest": asdict(Outcome.of(slow)),
        "connect_us": round((stats1[1] - stats0[1]) / max(1, stats1[0] - stats0[0]), 2),
        "disconnect_us": round((stats2[1] - stats1[1]) / max(1, stats2[0] - stats1[0]), 2),
    }

    # Redis CPU over heartbeat intervals, every process beating once in each:
    # in real time, or (compressed) one interval's beats back to back.
    intervals = 1 if compressed else args.cpu_intervals
    log(f"size {size:,}: CPU window ({intervals} x {args.heartbeat:g} s)")
    await bench.beat_due()
    cpu0, t0 = harness.redis_cpu_seconds(bench.admin), time.monotonic()
    for k in range(intervals):
        for p in range(PROCESSES):
            due = t0 + (k + p / PROCESSES) * args.heartbeat
            if not compressed:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await bench.beat(p)
    if not compressed:
        await asyncio.sleep(max(0.0, t0 + intervals * args.heartbeat - time.monotonic()))
    window = time.monotonic() - t0
    # Per heartbeat interval, so a window stretched by slow beats still counts
    # one beat per process per interval.
    spent = harness.redis_cpu_seconds(bench.admin) - cpu0
    gross = spent / (intervals * args.heartbeat)
    net = max(0.0, spent - idle_rate * window) / (intervals * args.heartbeat)
    out["cpu"] = {
        "method": "compressed: 20 beats back to back" if compressed else "real time",
        "window_s": round(window, 1),
        "redis_cpu_s": round(spent, 3),
        "redis_cpu_ms_per_s": round(gross * 1000, 3),
        "idle_server_cpu_ms_per_s": round(idle_rate * 1000, 3),
        "cpu_ms_per_s_per_100k": round(net * 1000 * 100_000 / filled, 3),
    }

    # Two groups: every connection also joins one of 1,000 rooms.
    log(f"size {size:,}: joining rooms")
    await bench.beat_due()
    before = bench.used_memory()
    bench.pop.rooms = True
    regular = bench.pop.regular()
    joined = 0
    bench.watch.start()
    while pairs := [(c, (room(c.index),)) for c in itertools.islice(regular, CHUNK)]:
        await bench.driver.join_many(pairs)
        joined += len(pairs)
        bench.watch.poll()
        await bench.beat_due()
    bench.watch.poll()
    after = bench.used_memory()
    out["memory"]["bytes_per_connection_two_groups"] = round(
        out["memory"]["bytes_per_connection_one_group"] + (after - before) / joined, 1
    )
    bench.watch.start()
    for p in range(PROCESSES):
        await bench.beat(p)
    slow = bench.watch.poll()
    out["heartbeats_two_groups"] = {"longest": asdict(Outcome.of(slow))}

    # A dead process: it stops beating, the others go on, its TTL passes, sweep.
    dead = PROCESSES - 1
    n_dead = len(bench.pop.live[dead])
    log(f"size {size:,}: process {dead} dies with {n_dead:,}; waiting out the TTL")
    ttl = bench.ttl
    if compressed:
        # Its last heartbeat, written with a short TTL, stands for one TTL ago.
        ttl = args.compressed_dead_ttl
        last = DRIVERS[args.store](bench.server.url, ttl, Policy())
        await last.heartbeat(dead, bench.pop.of(dead))
        await last.close()
    else:
        await bench.beat(dead)
    expires = time.monotonic() + ttl + 1.0
    bench.dead.add(dead)
    # The others beat until shortly before, not after: their heartbeats would
    # sweep a batch of the dead entries each, leaving the sweep less to do.
    while time.monotonic() < expires - 1.5:
        await bench.beat_due()
        await asyncio.sleep(0.2)
    await asyncio.sleep(max(0.0, expires - time.monotonic()))
    sweep, removed = await bench.measure(lambda: bench.driver.sweep_dead(dead))
    out["dead_process"] = {
        "connections": n_dead,
        "removed": removed,
        "sweep": asdict(sweep),
        "ttl_waited_s": ttl,
    }
    for conn in bench.pop.of(dead):
        bench.pop.remove(conn)

    # Last: at 1,000,000 this read leaves the Lua VM so much garbage that the
    # next script collects it (a 300 ms connect when churn came after it).
    log(f"size {size:,}: group_members of lobby")
    members, _ = await bench.measure(lambda: bench.driver.members_read(LOBBY))
    out["reads"]["members_of_lobby"] = asdict(members)
    out["reads"]["members_of_lobby_connections"] = bench.pop.count()
    return out


# The special cases, once ---------------------------------------------------------------


async def run_tabs(bench: Bench, policy: Policy) -> dict[str, Any]:
    """One user with ``--tabs`` connections, all on process 0."""
    args = bench.args
    await bench.use(policy)
    bench.context = f"tabs {policy}"
    await bench.fill(range(args.special_base), "base population")
    user = str(SPECIAL_USER_BASE + 1)
    session = _digest("tabs-session", 0, 32).translate(_SESSION_TABLE).decode()
    tabs = [bench.pop.special(0, user, session, (LOBBY,)) for _ in range(args.tabs)]
    log(f"tabs {policy}: connecting {args.tabs:,}")

    async def connect_tabs() -> None:
        # Small pipelines: the other processes must get their heartbeats in.
        await bench.fill(tabs, f"{args.tabs:,} tabs", chunk_size=50)

    connecting, _ = await bench.measure(connect_tabs)
    extra = bench.pop.special(0, user, session, (LOBBY,))

    async def while_they_exist() -> None:
        await bench.driver.connect(extra)
        await bench.driver.count_read(LOBBY)
        await bench.driver.disconnect(extra)

    await bench.beat_due()
    existing, _ = await bench.measure(while_they_exist)
    log(f"tabs {policy}: heartbeat of process 0")
    heartbeat, _ = await bench.measure(lambda: bench.beat(0))
    log(f"tabs {policy}: disconnect_user")
    kicked, removed = await bench.measure(lambda: bench.driver.disconnect_user(user))
    return {
        "policy": asdict(policy),
        "tabs": args.tabs,
        "base_population": args.special_base,
        "connecting": asdict(connecting),
        "one_more_tab_connect_count_disconnect": asdict(existing),
        "heartbeat_of_their_process": asdict(heartbeat),
        "disconnect_user": asdict(kicked),
        "disconnect_user_removed": removed,
        "lost": bench.lost,
    }


async def run_many_groups(bench: Bench) -> dict[str, Any]:
    """One connection joining ``--groups`` groups at once, another 100 at a time."""
    args = bench.args
    await bench.use(Policy())
    bench.context = "many groups"
    await bench.fill(range(args.special_base), "base population")
    groups = tuple(f"room-{k}" for k in range(args.groups))
    at_once = bench.pop.special(0, str(SPECIAL_USER_BASE + 2), "x" * 32, (LOBBY,))
    batched = bench.pop.special(0, str(SPECIAL_USER_BASE + 3), "y" * 32, (LOBBY,))
    for conn in (at_once, batched):
        await bench.driver.connect(conn)
        bench.pop.add(conn)
    log(f"{args.groups:,} groups: one join call")
    one_call, _ = await bench.measure(lambda: bench.driver.join(at_once, groups))

    async def join_batches() -> None:
        for start in range(0, len(groups), 100):
            await bench.driver.join(batched, groups[start : start + 100])

    log(f"{args.groups:,} groups: join calls of 100")
    batches, _ = await bench.measure(join_batches)
    for conn in (at_once, batched):
        bench.pop.replace(Conn(**(asdict(conn) | {"groups": (LOBBY, *groups)})))
    await bench.beat_due()
    heartbeat, _ = await bench.measure(lambda: bench.beat(0))
    disconnect, _ = await bench.measure(lambda: bench.driver.disconnect(at_once))
    return {
        "groups": args.groups,
        "base_population": args.special_base,
        "join_one_call": asdict(one_call),
        "join_calls_of_100": asdict(batches),
        "heartbeat_of_its_process": asdict(heartbeat),
        "disconnect_of_it": asdict(disconnect),
        "lost": bench.lost,
    }


# Report ---------------------------------------------------------------------------------


def _cell(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "-"
    return Outcome(**figure).cell()


def _ping(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['max_ms']:,.1f} / {stats['p99_ms']:,.2f}"


def _get(figures: dict[str, Any], *path: str) -> Any:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def print_report(results: dict[str, Any]) -> None:
    sizes = results.get("sizes", {})
    names = sorted(sizes, key=int)
    rows: list[list[Any]] = []

    def row(label: str, render: Callable[[dict[str, Any]], Any]) -> None:
        rows.append([label, *(render(sizes[n]) for n in names)])

    row("connections (per process)", lambda f: f"{f['connections']:,} ({f['per_process']:,})")
    row("fill: seconds", lambda f: _get(f, "fill", "seconds"))
    row("longest script: filling", lambda f: _cell(_get(f, "fill", "longest")))
    row("longest script: 20 heartbeats", lambda f: _cell(_get(f, "heartbeats", "longest")))
    row("heartbeat client s, max", lambda f: _get(f, "heartbeats", "client_max_s"))
    row("PING max / p99 ms, heartbeats", lambda f: _ping(_get(f, "heartbeats", "ping_during")))
    row("PING max / p99 ms, idle", lambda f: _ping(_get(f, "heartbeats", "ping_idle")))
    row("longest script: count reads", lambda f: _cell(_get(f, "reads", "longest")))
    row("group_size us: at size", lambda f: _get(f, "reads", "count_us_at_size"))
    row("group_size us: at 10", lambda f: _get(f, "reads", "count_us_at_10"))
    row("group_size ratio", lambda f: _get(f, "reads", "ratio"))
    row("group_members(lobby) at 19/20", lambda f: _cell(_get(f, "reads", "members_of_lobby")))
    row("longest script: churn", lambda f: _cell(_get(f, "churn", "longest")))
    row("connect us (Redis)", lambda f: _get(f, "churn", "connect_us"))
    row("disconnect us (Redis)", lambda f: _get(f, "churn", "disconnect_us"))
    row("time (TTL s)", lambda f: f"{f.get('time', '-')} ({f.get('ttl_s', '-')})")
    row("Redis CPU ms/s per 100k idle", lambda f: _get(f, "cpu", "cpu_ms_per_s_per_100k"))
    row("Redis CPU ms/s, whole server", lambda f: _get(f, "cpu", "redis_cpu_ms_per_s"))
    row("bytes/connection, 1 group", lambda f: _get(f, "memory", "bytes_per_connection_one_group"))
    row(
        "bytes/connection, 2 groups", lambda f: _get(f, "memory", "bytes_per_connection_two_groups")
    )
    row(
        "longest: heartbeats, 2 groups",
        lambda f: _cell(_get(f, "heartbeats_two_groups", "longest")),
    )
    row("dead process: connections", lambda f: _get(f, "dead_process", "connections"))
    row("dead process: longest sweep", lambda f: _cell(_get(f, "dead_process", "sweep")))
    row("dead process: sweep total s", lambda f: _get(f, "dead_process", "sweep", "client_s"))
    if names:
        store = results.get("store", "?")
        harness.print_table(
            f"Presence at scale, {store} store (longest script: Redis time, from SLOWLOG)",
            ["figure", *(f"{int(n):,}" for n in names)],
            rows,
        )
    special = results.get("special", {})
    special_rows: list[list[Any]] = []
    for case, figures in special.items():
        for key, value in figures.items():
            if isinstance(value, dict) and "us" in value:
                special_rows.append([case, key, Outcome(**value).cell(), value["client_s"]])
    if special_rows:
        harness.print_table(
            "Special cases (longest script while the step ran; client seconds)",
            ["case", "step", "longest script", "client s"],
            special_rows,
        )
    for size, repeats in results.get("repeats", {}).items():
        for figures in repeats:
            print(
                f"earlier run of {int(size):,}: heartbeats "
                f"{_cell(_get(figures, 'heartbeats', 'longest'))}; CPU ms/s per 100k "
                f"{_get(figures, 'cpu', 'cpu_ms_per_s_per_100k')}; connect us "
                f"{_get(figures, 'churn', 'connect_us')}"
            )
    for note in results.get("notes", []):
        print(f"note: {note}")


def merge(paths: Sequence[str]) -> dict[str, Any]:
    """Earlier runs' JSON joined: a size measured twice keeps the later run's
    figures and the earlier ones under ``repeats``."""
    merged: dict[str, Any] = {"sizes": {}, "special": {}, "repeats": {}, "notes": [], "runs": []}
    for path in paths:
        run = json.loads(Path(path).read_text())
        for size, figures in run.get("sizes", {}).items():
            if size in merged["sizes"]:
                merged["repeats"].setdefault(size, []).append(merged["sizes"][size])
            merged["sizes"][size] = figures
        merged["special"].update(run.get("special", {}))
        merged["notes"] += run.get("notes", [])
        merged["runs"].append({k: v for k, v in run.items() if k not in ("sizes", "special")})
        merged.setdefault("store", run.get("store"))
        merged.setdefault("method", run.get("method"))
    merged["runtime_s"] = round(sum(run.get("runtime_s", 0.0) for run in merged["runs"]), 1)
    return merged


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=harness.BENCH_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    server = RedisServer()
    server.start()
    bench = Bench(args, server)
    results: dict[str, Any] = {
        "store": args.store,
        "commit": git_commit(),
        "machine": harness.machine_info(server.url),
        # Other work on the machine shows in latencies: say how busy it was.
        "load_average_start": os.getloadavg(),
        "settings": {
            "processes": PROCESSES,
            "ttl_s": args.ttl,
            "heartbeat_s": args.heartbeat,
            "max_sessions": 1,
            "session_scope": "user",
            "churn": args.churn,
            "reads": args.reads,
            "cpu_intervals": args.cpu_intervals,
            "slowlog_floor_us": args.slowlog_floor,
            "compress_above": args.compress_above,
        },
        "method": (__doc__ or "").split("How each figure is measured:", 1)[-1].strip(),
        "sizes": {},
        "special": {},
    }
    try:
        for size in args.sizes:
            results["sizes"][str(size)] = await run_size(bench, size)
            if bench.lost:
                bench.notes.append(f"size {size}: Redis was restarted; later phases skipped")
            log(f"size {size:,} done")
        if args.specials:
            results["special"]["tabs_max_sessions_none"] = await run_tabs(bench, Policy(None))
            results["special"]["tabs_scope_session_max_1"] = await run_tabs(
                bench, Policy(1, "session")
            )
            results["special"]["many_groups"] = await run_many_groups(bench)
    finally:
        await bench.driver.close()
        server.remove()
    results["notes"] = bench.notes
    results["load_average_end"] = os.getloadavg()
    results["runtime_s"] = round(time.monotonic() - started, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="populations to measure")
    parser.add_argument(
        "--store",
        choices=sorted(DRIVERS),
        default="new",
        help="store adapter (old: run from a checkout of c8aa61a, the store before v2)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="report earlier runs joined")
    parser.add_argument("--no-specials", dest="specials", action="store_false")
    parser.add_argument("--ttl", type=float, default=60.0, help="store TTL, s")
    parser.add_argument("--heartbeat", type=float, default=20.0, help="heartbeat interval, s")
    parser.add_argument("--cpu-intervals", type=int, default=3, help="heartbeat intervals")
    parser.add_argument("--churn", type=int, default=2_000, help="connects + disconnects")
    parser.add_argument("--reads", type=int, default=2_000, help="count reads per group")
    parser.add_argument("--tabs", type=int, default=5_000, help="one user's connections")
    parser.add_argument("--groups", type=int, default=10_000, help="groups of one connection")
    parser.add_argument("--special-base", type=int, default=10_000, help="population of specials")
    parser.add_argument("--fill-budget", type=float, default=900.0, help="s per fill, at most")
    parser.add_argument("--memory-limit-gb", type=float, default=6.0, help="Redis memory cap")
    parser.add_argument("--stuck-limit", type=float, default=600.0, help="s to wait for a script")
    parser.add_argument(
        "--compress-above", type=int, default=100_000, help="sizes run in compressed time"
    )
    parser.add_argument("--compressed-ttl", type=float, default=7200.0, help="their TTL, s")
    parser.add_argument("--compressed-dead-ttl", type=float, default=5.0, help="dead's TTL, s")
    parser.add_argument("--slowlog-floor", type=int, default=50, help="SLOWLOG threshold, us")
    parser.add_argument("--pinger", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pinger:
        run_pinger(args.pinger)
        return
    # A plain kill still stops the throwaway Redis (finally blocks, atexit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.merge:
        results = merge(args.merge)
    else:
        args.sizes = [int(s) for s in args.sizes.split(",") if s]
        results = asyncio.run(run(args))
    print_report(results)
    if "runtime_s" in results:
        print(f"\n(runtime {results['runtime_s']:,.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print("RESULT " + json.dumps(results, sort_keys=True, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
