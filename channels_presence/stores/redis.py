"""The production store: Redis, shared by every process and server.

Every write is one Lua script run with ``EVALSHA``: one round trip, atomic,
timed by the Redis server's clock. Reads are scripts too (they need that clock
to leave out entries whose deadline has passed) and cost O(log n) for counts.

Key layout (``P`` is ``KEY_PREFIX``)::

    P:conn               hash  channel -> record (JSON: user, session,
                               connected_at in ms, groups, meta)
    P:alive              zset  channel -> deadline (now + TTL, pushed by heartbeats)
    P:users              hash  user -> the user's channels, oldest first
    P:group:<g>          zset  channel -> deadline (the group's connections)
    P:group:<g>:users    zset  user -> latest deadline of their connections in g
    P:groups             zset  group -> latest deadline (the registry of groups)
    P:gone:<channel>     string, a tombstone: removed here, must not come back

Every key expires (``KEY_EXPIRY_FACTOR`` x TTL after it was last written or
refreshed), so nothing outlives the processes that used it. Put a hash tag in
the prefix (``KEY_PREFIX="{presence}"``) and every key lands in one Redis
Cluster slot, which the scripts need since they derive keys from the prefix.

Async methods use ``redis.asyncio`` with one client per event loop (its
connections are bound to the loop that opened them); the sync twins use a
plain ``redis.Redis``. Each operation is built once as an :class:`_Op` and run
on either client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..conf import PresenceSettings
from ..exceptions import StoreUnavailable
from ..loops import PerLoop
from .base import (
    Absence,
    Connection,
    ConnectResult,
    Departure,
    GroupMember,
    RefreshResult,
    SessionPolicy,
)

__all__ = ["RedisStore"]

logger = logging.getLogger("channels_presence")

T = TypeVar("T")

#: Expired connections removed per heartbeat and per sweep script: bounds how
#: long one script holds Redis.
SWEEP_BATCH = 500
#: Keys expire this many TTLs after their last write, leaving surviving
#: processes ample time to sweep (and report) what a dead process left behind.
KEY_EXPIRY_FACTOR = 10
#: Tombstones outlive any heartbeat that was in flight when the entry was removed.
TOMBSTONE_FACTOR = 2
CONNECT_TIMEOUT = 2.0
#: Connections per pool (per process and event loop); more callers wait their turn.
MAX_CONNECTIONS = 100
#: A heartbeat of many thousands of connections is one script: allow it time.
SOCKET_TIMEOUT = 5.0

_WRITE_SCRIPTS = (
    "connect",
    "disconnect",
    "join",
    "leave",
    "set_meta",
    "refresh",
    "disconnect_user",
    "sweep",
    "settle",
)
_READ_SCRIPTS = ("count", "group_members", "group_users", "user_connections", "groups")
# Pool options of Django's RedisCache that are not connection arguments.
_NOT_CONNECTION_OPTIONS = {"parser_class", "pool_class", "serializer", "serializer_class"}


@dataclass(frozen=True)
class _Script:
    """A Lua script's source and SHA1, loaded on first use by each client."""

    name: str
    source: str
    sha: str


def _load_scripts() -> dict[str, _Script]:
    folder = resources.files(__package__ or "channels_presence.stores")
    lib = folder.joinpath("_lib.lua").read_text(encoding="utf-8")
    scripts = {}
    for name in _WRITE_SCRIPTS + _READ_SCRIPTS:
        body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        source = f"{lib}\n-- {name}.lua\n{body}"
        sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        scripts[name] = _Script(name, source, sha)
    return scripts


_SCRIPTS = _load_scripts()


@dataclass(frozen=True)
class _Op(Generic[T]):
    """One store operation: a script, its extra keys and arguments, and how to
    read its reply. Built once, then run on the sync or the async client."""

    script: str
    parse: Callable[[Any], T]
    keys: tuple[str, ...] = ()
    args: tuple[str | int | float, ...] = ()


def _safe_url(url: str) -> str:
    """``url`` with any password replaced, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _strings(value: Any) -> tuple[str, ...]:
    # cjson writes an empty Lua table as {}; every list we get may be one.
    if not value:
        return ()
    return tuple(str(v) for v in value)


def _connection(channel: str, raw: str) -> Connection:
    rec = json.loads(raw)
    meta = rec.get("m")
    return Connection(
        channel_name=channel,
        user=rec.get("u"),
        session=rec.get("s"),
        connected_at=float(rec.get("t", 0)) / 1000,
        groups=_strings(rec.get("g")),
        meta=json.loads(meta) if meta is not None else None,
    )


def _departure(item: list[Any]) -> Departure:
    channel, raw, left, offline = item
    return Departure(
        _connection(channel, raw), user_left=_strings(left), went_offline=bool(offline)
    )


def _departures(items: Any) -> tuple[Departure, ...]:
    return tuple(_departure(item) for item in items or ())


def _parse_connect(raw: str) -> ConnectResult:
    reply = json.loads(raw)
    if not reply[0]:
        return ConnectResult(accepted=False)
    _, came_online, joined, evicted, connected_at = reply
    return ConnectResult(
        accepted=True,
        evicted=_departures(evicted),
        came_online=bool(came_online),
        user_joined=_strings(joined),
        connected_at=float(connected_at) / 1000,
    )


def _parse_departure(raw: str | None) -> Departure | None:
    return None if raw is None else _departure(json.loads(raw))


def _parse_groups(raw: str | None) -> tuple[str, ...]:
    return () if raw is None else _strings(json.loads(raw))


def _parse_refresh(raw: str) -> RefreshResult:
    closed, expired, restored, settled = json.loads(raw)
    pairs = [(str(c), str(why)) for c, why in closed or ()]
    return RefreshResult(
        closed=tuple(c for c, _ in pairs),
        close_reasons=dict(pairs),
        expired=_departures(expired),
        restored=int(restored),
        settled=_parse_absences(settled),
    )


def _parse_absences(raw: str | list[Any] | None) -> tuple[Absence, ...]:
    items = json.loads(raw) if isinstance(raw, str) else raw
    return tuple(Absence(str(user), group or None) for user, group in items or ())


def _parse_departures(raw: str) -> tuple[Departure, ...]:
    return _departures(json.loads(raw))


def _parse_connections(raw: str) -> tuple[Connection, ...]:
    conns = [_connection(channel, rec) for channel, rec in json.loads(raw) or ()]
    return tuple(sorted(conns, key=lambda c: (c.connected_at, c.channel_name)))


def _parse_members(raw: str) -> tuple[GroupMember, ...]:
    by_user: dict[str | None, list[Connection]] = {}
    for conn in _parse_connections(raw):
        by_user.setdefault(conn.user, []).append(conn)
    members = [
        GroupMember(user, tuple(sorted(conns, key=lambda c: (c.connected_at, c.channel_name))))
        for user, conns in by_user.items()
    ]
    # Longest present first; anonymous connections after the users.
    members.sort(key=lambda m: (m.user is None, m.connections[0].connected_at))
    return tuple(members)


def _parse_registry(raw: str) -> dict[str, int]:
    return dict(sorted((str(g), int(n)) for g, n in json.loads(raw) or ()))


def _opt(value: str | None) -> str:
    # Scripts take '' for None: user keys, session keys and JSON are never empty.
    return "" if value is None else value


def _meta(meta: dict[str, Any] | None) -> str:
    return "" if meta is None else json.dumps(meta, separators=(",", ":"))


def _group_list(groups: tuple[str, ...]) -> str:
    return json.dumps(list(dict.fromkeys(groups)))


class RedisStore:
    """Presence in Redis: correct across processes and servers.

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL; extra
    ``connection_kwargs`` (``password``, ``db``, ``socket_timeout``...) go to
    the connection pool of both clients. ``ttl`` is how long a connection
    counts as alive after its last heartbeat.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "presence",
        ttl: float = 60.0,
        connection_kwargs: Mapping[str, Any] | None = None,
        sweep_batch: int = SWEEP_BATCH,
        grace: float = 0.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:{}\-]{1,64}", prefix):
            raise ValueError(
                f"Key prefix {prefix!r} must be 1 to 64 ASCII letters, digits or _ . : - {{ }}."
            )
        if not ttl > 0:
            raise ValueError(f"ttl is {ttl!r}; it must be a positive number of seconds.")
        self.url = url
        self.prefix = prefix
        self.ttl = float(ttl)
        self.sweep_batch = int(sweep_batch)
        self.key_expiry = math.ceil(self.ttl * KEY_EXPIRY_FACTOR)
        self.tombstone_expiry = math.ceil(self.ttl * TOMBSTONE_FACTOR)
        self._kwargs: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            **(connection_kwargs or {}),
            # Our replies are JSON and names: text throughout.
            "decode_responses": True,
        }
        self._base_keys = tuple(f"{prefix}:{name}" for name in ("conn", "alive", "groups", "users"))
        self.grace = float(grace)
        self._base_args = (
            prefix,
            repr(self.ttl),
            self.key_expiry,
            self.tombstone_expiry,
            repr(self.grace),
        )
        self._lock = threading.Lock()
        self._sync: redis.Redis | None = None
        # redis.asyncio connections belong to the loop that opened them.
        self._async: PerLoop[redis.asyncio.Redis] = PerLoop(lambda loop: self._new_async_client())

    def __repr__(self) -> str:
        return f"RedisStore(url={_safe_url(self.url)!r}, prefix={self.prefix!r})"

    @classmethod
    def from_cache_config(cls, config: Mapping[str, Any], settings: PresenceSettings) -> RedisStore:
        """A store on the Redis server of a Django ``CACHES`` entry.

        Understands ``django_redis.cache.RedisCache`` (``OPTIONS`` such as
        ``PASSWORD``, ``USERNAME``, ``DB``, ``SOCKET_TIMEOUT``,
        ``SOCKET_CONNECT_TIMEOUT``, ``CONNECTION_POOL_KWARGS``) and
        ``django.core.cache.backends.redis.RedisCache`` (``OPTIONS`` passed to
        the pool, such as ``db`` or ``password``). ``LOCATION`` may be a URL,
        a comma-separated string or a list; the first one is the writer, as
        both backends treat it, and presence needs to write. As for the cache
        itself, a database or password in the URL wins over ``OPTIONS``
        (redis-py's precedence), so presence lands where the cache does.
        """
        location = config.get("LOCATION") or "redis://localhost:6379/0"
        if isinstance(location, str):
            locations = [loc.strip() for loc in re.split("[;,]", location) if loc.strip()]
        else:
            locations = [str(loc) for loc in location]
        if not locations:
            raise ValueError(f"Cache LOCATION {location!r} names no Redis server.")
        url = locations[0]
        options: Mapping[str, Any] = config.get("OPTIONS") or {}
        kwargs: dict[str, Any] = {}
        if config.get("BACKEND") == "django_redis.cache.RedisCache":
            kwargs.update(options.get("CONNECTION_POOL_KWARGS") or {})
            for option, kwarg in (
                ("USERNAME", "username"),
                ("PASSWORD", "password"),
                ("DB", "db"),
                ("SOCKET_TIMEOUT", "socket_timeout"),
                ("SOCKET_CONNECT_TIMEOUT", "socket_connect_timeout"),
            ):
                if options.get(option) is not None:
                    kwargs[kwarg] = options[option]
        else:
            kwargs.update(
                (key, value) for key, value in options.items() if key not in _NOT_CONNECTION_OPTIONS
            )
        return cls(
            url,
            prefix=settings.KEY_PREFIX,
            ttl=settings.TTL,
            connection_kwargs=kwargs,
            grace=settings.LEAVE_GRACE,
        )

    # Keys ---------------------------------------------------------------------

    def _group_key(self, group: str) -> str:
        return f"{self.prefix}:group:{group}"

    def _members_key(self, group: str) -> str:
        return f"{self.prefix}:group:{group}:users"

    # Running operations ---------------------------------------------------------

    def _unavailable(self, exc: RedisError) -> StoreUnavailable:
        where = _safe_url(self.url)
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            return StoreUnavailable(f"Redis at {where} is unreachable: {exc}")
        return StoreUnavailable(f"Redis at {where} failed: {type(exc).__name__}: {exc}")

    def _argv(self, op: _Op[Any]) -> tuple[int, tuple[str | int | float, ...]]:
        keys = self._base_keys + op.keys
        return len(keys), (*keys, *self._base_args, *op.args)

    def _pool_kwargs(self) -> dict[str, Any]:
        # A blocking pool: a burst of connects waits for a free connection
        # (scripts take well under a millisecond) instead of failing as if
        # Redis were down, which a plain pool does past max_connections.
        kwargs = dict(self._kwargs)
        kwargs.setdefault("max_connections", MAX_CONNECTIONS)
        kwargs.setdefault("timeout", SOCKET_TIMEOUT)
        return kwargs

    def _sync_client(self) -> redis.Redis:
        with self._lock:
            if self._sync is None:
                pool = redis.BlockingConnectionPool.from_url(
                    self.url,
                    # One quick retry covers a pooled socket that died with a
                    # Redis restart; timeouts are not retried, since the
                    # script may have run.
                    retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                    **self._pool_kwargs(),
                )
                self._sync = redis.Redis(connection_pool=pool)
            return self._sync

    def _async_client(self) -> redis.asyncio.Redis:
        return self._async.get()

    def _new_async_client(self) -> redis.asyncio.Redis:
        apool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **self._pool_kwargs(),
        )
        return redis.asyncio.Redis(connection_pool=apool)

    def _run(self, op: _Op[T]) -> T:
        client = self._sync_client()
        script = _SCRIPTS[op.script]
        numkeys, argv = self._argv(op)
        try:
            try:
                raw = client.evalsha(script.sha, numkeys, *argv)
            except NoScriptError:
                # First use on this server (or it restarted): load, then retry.
                client.script_load(script.source)
                raw = client.evalsha(script.sha, numkeys, *argv)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return op.parse(raw)

    async def _arun(self, op: _Op[T]) -> T:
        entry = self._async_client()
        script = _SCRIPTS[op.script]
        numkeys, argv = self._argv(op)
        try:
            try:
                raw = await entry.evalsha(script.sha, numkeys, *argv)
            except NoScriptError:
                await entry.script_load(script.source)
                raw = await entry.evalsha(script.sha, numkeys, *argv)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return op.parse(raw)

    # Operations, each built once ---------------------------------------------------

    def _connect_op(self, connection: Connection, policy: SessionPolicy) -> _Op[ConnectResult]:
        return _Op(
            "connect",
            args=(
                connection.channel_name,
                _opt(connection.user),
                _opt(connection.session),
                _group_list(connection.groups),
                _meta(connection.meta),
                "" if policy.max_sessions is None else policy.max_sessions,
                policy.scope,
                policy.on_limit,
                # A caller that already knows the time on the store's clock may pass it.
                repr(connection.connected_at),
            ),
            parse=_parse_connect,
        )

    def _disconnect_op(self, channel_name: str) -> _Op[Departure | None]:
        return _Op("disconnect", args=(channel_name,), parse=_parse_departure)

    def _join_op(self, channel_name: str, groups: tuple[str, ...]) -> _Op[tuple[str, ...]]:
        return _Op("join", args=(channel_name, _group_list(groups)), parse=_parse_groups)

    def _leave_op(self, channel_name: str, groups: tuple[str, ...]) -> _Op[tuple[str, ...]]:
        return _Op("leave", args=(channel_name, _group_list(groups)), parse=_parse_groups)

    def _set_meta_op(self, channel_name: str, meta: dict[str, Any] | None) -> _Op[bool]:
        return _Op("set_meta", args=(channel_name, _meta(meta)), parse=bool)

    def _refresh_op(
        self, connections: tuple[Connection, ...], policy: SessionPolicy | None
    ) -> _Op[RefreshResult]:
        items = [
            [
                c.channel_name,
                _opt(c.user),
                _opt(c.session),
                c.connected_at,
                list(dict.fromkeys(c.groups)),
                _meta(c.meta),
            ]
            for c in connections
        ]
        return _Op(
            "refresh",
            args=(
                json.dumps(items, separators=(",", ":")),
                self.sweep_batch,
                "" if policy is None or policy.max_sessions is None else policy.max_sessions,
                "user" if policy is None else policy.scope,
            ),
            parse=_parse_refresh,
        )

    def _disconnect_user_op(
        self, user: str, session: str | None, reason: str
    ) -> _Op[tuple[Departure, ...]]:
        return _Op("disconnect_user", args=(user, _opt(session), reason), parse=_parse_departures)

    def _settle_op(self) -> _Op[tuple[Absence, ...]]:
        return _Op("settle", args=(self.sweep_batch,), parse=_parse_absences)

    def _sweep_op(self) -> _Op[tuple[Departure, ...]]:
        return _Op("sweep", args=(self.sweep_batch,), parse=_parse_departures)

    def _count_op(self, keys: tuple[str, ...]) -> _Op[list[int]]:
        return _Op("count", keys=keys, parse=lambda raw: [int(n) for n in raw])

    def _members_op(self, group: str) -> _Op[tuple[GroupMember, ...]]:
        return _Op("group_members", keys=(self._group_key(group),), parse=_parse_members)

    def _group_users_op(self, group: str) -> _Op[tuple[str, ...]]:
        return _Op(
            "group_users",
            keys=(self._members_key(group),),
            parse=lambda raw: tuple(str(u) for u in raw),
        )

    def _user_connections_op(self, user: str) -> _Op[tuple[Connection, ...]]:
        return _Op("user_connections", args=(user,), parse=_parse_connections)

    def _groups_op(self) -> _Op[dict[str, int]]:
        return _Op("groups", parse=_parse_registry)

    # Writes -------------------------------------------------------------------

    async def aconnect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        """Record ``connection``, apply ``policy`` and join its groups, atomically."""
        return await self._arun(self._connect_op(connection, policy))

    def connect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        """Sync twin of :meth:`aconnect`."""
        return self._run(self._connect_op(connection, policy))

    async def adisconnect(self, channel_name: str) -> Departure | None:
        """Remove a connection from everything; ``None`` if it was not there."""
        return await self._arun(self._disconnect_op(channel_name))

    def disconnect(self, channel_name: str) -> Departure | None:
        """Sync twin of :meth:`adisconnect`."""
        return self._run(self._disconnect_op(channel_name))

    async def ajoin(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Add a recorded connection to groups; return those the user newly joined."""
        return await self._arun(self._join_op(channel_name, groups))

    def join(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Sync twin of :meth:`ajoin`."""
        return self._run(self._join_op(channel_name, groups))

    async def aleave(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Remove a connection from groups; return those the user no longer is in."""
        return await self._arun(self._leave_op(channel_name, groups))

    def leave(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Sync twin of :meth:`aleave`."""
        return self._run(self._leave_op(channel_name, groups))

    async def aset_meta(self, channel_name: str, meta: dict[str, Any] | None) -> bool:
        """Replace a connection's metadata; ``False`` if it is not recorded."""
        return await self._arun(self._set_meta_op(channel_name, meta))

    def set_meta(self, channel_name: str, meta: dict[str, Any] | None) -> bool:
        """Sync twin of :meth:`aset_meta`."""
        return self._run(self._set_meta_op(channel_name, meta))

    async def arefresh(
        self, connections: tuple[Connection, ...], policy: SessionPolicy | None = None
    ) -> RefreshResult:
        """Keep this process's connections alive, in one round trip.

        Re-writes any that are missing, reports those that must close (removed
        by eviction, ``disconnect_user`` or a sweep), and sweeps up to
        ``sweep_batch`` expired entries of any process.
        """
        return await self._arun(self._refresh_op(connections, policy))

    def refresh(
        self, connections: tuple[Connection, ...], policy: SessionPolicy | None = None
    ) -> RefreshResult:
        """Sync twin of :meth:`arefresh`."""
        return self._run(self._refresh_op(connections, policy))

    async def adisconnect_user(
        self, user: str, session: str | None = None, reason: str = "kicked"
    ) -> tuple[Departure, ...]:
        """Remove every connection of ``user`` (of one session, if given)."""
        return await self._arun(self._disconnect_user_op(user, session, reason))

    def disconnect_user(
        self, user: str, session: str | None = None, reason: str = "kicked"
    ) -> tuple[Departure, ...]:
        """Sync twin of :meth:`adisconnect_user`."""
        return self._run(self._disconnect_user_op(user, session, reason))

    async def asettle(self) -> tuple[Absence, ...]:
        """Claim the departures whose leave grace has run out (exactly once overall)."""
        return await self._arun(self._settle_op())

    def settle(self) -> tuple[Absence, ...]:
        """Sync twin of :meth:`asettle`."""
        return self._run(self._settle_op())

    async def asweep(self) -> tuple[Departure, ...]:
        """Remove every expired entry now; return what was removed.

        Runs the sweep script in batches, each atomic, so Redis is never held
        for long however much there is to sweep.
        """
        found: list[Departure] = []
        while True:
            batch = await self._arun(self._sweep_op())
            found.extend(batch)
            if len(batch) < self.sweep_batch:
                return tuple(found)

    def sweep(self) -> tuple[Departure, ...]:
        """Sync twin of :meth:`asweep`."""
        found: list[Departure] = []
        while True:
            batch = self._run(self._sweep_op())
            found.extend(batch)
            if len(batch) < self.sweep_batch:
                return tuple(found)

    # Reads --------------------------------------------------------------------

    async def agroup_size(self, group: str) -> int:
        """Live connections in ``group``: O(log n)."""
        return (await self._arun(self._count_op((self._group_key(group),))))[0]

    def group_size(self, group: str) -> int:
        """Sync twin of :meth:`agroup_size`."""
        return self._run(self._count_op((self._group_key(group),)))[0]

    async def agroup_user_count(self, group: str) -> int:
        """Distinct users with a live connection in ``group``: O(log n)."""
        return (await self._arun(self._count_op((self._members_key(group),))))[0]

    def group_user_count(self, group: str) -> int:
        """Sync twin of :meth:`agroup_user_count`."""
        return self._run(self._count_op((self._members_key(group),)))[0]

    async def agroup_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        """Live connections of many groups, in one round trip."""
        if not groups:
            return {}
        counts = await self._arun(self._count_op(tuple(map(self._group_key, groups))))
        return dict(zip(groups, counts, strict=True))

    def group_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        """Sync twin of :meth:`agroup_sizes`."""
        if not groups:
            return {}
        counts = self._run(self._count_op(tuple(map(self._group_key, groups))))
        return dict(zip(groups, counts, strict=True))

    async def agroup_members(self, group: str) -> tuple[GroupMember, ...]:
        """The users present in ``group`` (anonymous ones under ``None``), O(n)."""
        return await self._arun(self._members_op(group))

    def group_members(self, group: str) -> tuple[GroupMember, ...]:
        """Sync twin of :meth:`agroup_members`."""
        return self._run(self._members_op(group))

    async def agroup_users(self, group: str) -> tuple[str, ...]:
        """The users with a live connection in ``group``: one ZRANGEBYSCORE, no records."""
        return await self._arun(self._group_users_op(group))

    def group_users(self, group: str) -> tuple[str, ...]:
        """Sync twin of :meth:`agroup_users`."""
        return self._run(self._group_users_op(group))

    async def auser_connections(self, user: str) -> tuple[Connection, ...]:
        """A user's live connections, oldest first."""
        return await self._arun(self._user_connections_op(user))

    def user_connections(self, user: str) -> tuple[Connection, ...]:
        """Sync twin of :meth:`auser_connections`."""
        return self._run(self._user_connections_op(user))

    async def agroups(self) -> dict[str, int]:
        """Every group with at least one live connection, with its size."""
        return await self._arun(self._groups_op())

    def groups(self) -> dict[str, int]:
        """Sync twin of :meth:`agroups`."""
        return self._run(self._groups_op())

    # Lifecycle ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close this loop's client and the sync one; others are closed on their loops."""
        mine = self._async.pop()
        if mine is not None:
            await mine.aclose()
        self.close()

    def close(self) -> None:
        """Close every client. Async ones are closed on their own loops when
        those still run; a client of a closed loop has nothing left to close."""
        with self._lock:
            sync, self._sync = self._sync, None
        clients = self._async.pop_all()
        if sync is not None:
            sync.close()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, entry in clients:
            if loop.is_closed():
                continue
            if loop is current:
                # Called from sync code inside this loop: cannot wait here.
                loop.create_task(entry.aclose())
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(entry.aclose(), loop)
            else:
                loop.run_until_complete(entry.aclose())
