"""The production store: Redis, shared by every process and server.

The work is done by one Redis function library (``presence.lua``, loaded once
with ``FUNCTION LOAD``): each write is one ``FCALL``, one round trip, atomic,
timed by the Redis server's clock, and bounded: no function's cost grows with
a population. Counts are plain commands (``GET``, ``HLEN``): O(1).

Liveness is per node (one event loop of one server process): a heartbeat is
one ``ZADD`` however many connections the node holds, and the connections of
a node that stops beating are removed by the other nodes in bounded batches.
The key layout is documented at the top of ``presence.lua``: every key of one
user, one group or one node carries that thing's own hash tag.

Async methods use ``redis.asyncio`` with one client per event loop (its
connections are bound to the loop that opened them); the sync twins use a
plain ``redis.Redis``. An operation of several steps (a listing in pages, a
removal in batches) is written once, as a generator of steps, and driven by
either client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..conf import PresenceSettings
from ..exceptions import StoreUnavailable
from ..loops import LoopEnding, PerLoop
from .base import (
    AUDIT_BATCH,
    FENCE_SECONDS,
    Absence,
    Connection,
    ConnectResult,
    Departure,
    GroupMember,
    RefreshResult,
    RestoreResult,
    SessionPolicy,
)
from .sentinel import SentinelSettings

__all__ = ["RedisStore"]

logger = logging.getLogger("channels_presence")

T = TypeVar("T")

#: Units of work (a connection, plus one per group it is in) one call may do
#: removing dead nodes' connections: bounds how long it holds Redis.
REAP_BUDGET = 300
#: Removed-elsewhere notices a heartbeat takes at once.
INBOX_BATCH = 500
#: Due departures claimed per call.
SETTLE_BATCH = 500
#: Hash fields one ``disconnect_user`` step scans (about four a connection).
USER_BATCH = 200
#: Connections written back per call after the store lost a node's records.
RESTORE_BATCH = 200
#: Groups or users one read step returns.
READ_BATCH = 500
#: Users whose connections one ``group_connections`` step reads.
MEMBERS_BATCH = 100
#: Groups one join or leave call changes: a longer list takes several calls.
GROUPS_BATCH = 100
#: What ``retire`` answers when it looked through its share of a node's
#: buckets without reaching the end: call again.
RETIRE_AGAIN = 2
#: Node records and tombstones expire this many TTLs after their last refresh.
KEY_EXPIRY_FACTOR = 10
CONNECT_TIMEOUT = 2.0
#: Connections per pool (per process and event loop); more callers wait their turn.
MAX_CONNECTIONS = 100
SOCKET_TIMEOUT = 5.0
# Pool options of Django's RedisCache that are not connection arguments.
_NOT_CONNECTION_OPTIONS = {"parser_class", "pool_class", "serializer", "serializer_class"}
_PLAIN_USER = re.compile(r"[A-Za-z0-9_.@\-]+")
#: Words of the errors a cluster node gives a client that is not cluster-aware.
_CLUSTER_SIGNS = ("MOVED ", "CROSSSLOT", "non local key", "hash to the same slot")
_CONN_ID = re.compile(r"[A-Za-z0-9]{1,16}\.[0-9a-z]{1,13}")


def _load_library() -> tuple[str, str]:
    """The function library's name and source, named by a digest of its text."""
    folder = resources.files(__package__ or "channels_presence.stores")
    body = folder.joinpath("presence.lua").read_text(encoding="utf-8")
    name = "chpresence_" + hashlib.sha1(body.encode("utf-8")).hexdigest()[:12]
    return name, f"#!lua name={name}\nlocal LIB = '{name}'\n{body}"


LIBRARY, _SOURCE = _load_library()


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool (it follows the primary) that waits for a free
    connection, as the store's plain pool does, instead of failing past its size."""


class _AsyncBlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """The async twin of :class:`_BlockingSentinelPool`."""


@dataclass(frozen=True)
class _Op(Generic[T]):
    """One command (a function call or a plain read) and how to read its reply."""

    command: tuple[Any, ...]
    parse: Callable[[Any], T]


#: A multi-step operation: yields commands (``_Op``; on a cluster also batches
#: of them), receives their parsed replies.
Steps = Generator[Any, Any, T]


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


def channel_prefix(channel: str) -> str:
    """The part of a channel name shared by every channel of one layer instance.

    ``channels_redis`` names channels ``specific.<instance>!<random>`` and the
    in-memory layer ``specific..inmemory!<random>``: everything up to the last
    ``!`` is the same for a process, so the store keeps it once per node.
    """
    bang = channel.rfind("!")
    return channel[: bang + 1] if bang >= 0 else ""


_HEX_PART = re.compile(r"[0-9a-f]{32}")


def _channel_part(channel: str, prefix: str) -> str:
    """What the store keeps of a channel name, given its node's prefix.

    "=" and "*" cannot start a channel name: "=" marks a name stored whole,
    "*" a 32-digit hex part (``channels_redis``'s) stored in 22 base-64 digits.
    """
    if not (prefix and channel.startswith(prefix)):
        return "=" + channel
    part = channel[len(prefix) :]
    if _HEX_PART.fullmatch(part):
        return "*" + base64.urlsafe_b64encode(bytes.fromhex(part)).decode().rstrip("=")
    return part


def _channel_name(part: str, prefix: str) -> str:
    if part.startswith("="):
        return part[1:]
    if part.startswith("*"):
        return prefix + base64.urlsafe_b64decode(part[1:] + "==").hex()
    return prefix + part


def _connection(item: list[Any], prefixes: Mapping[str, str]) -> Connection:
    """A record as the functions return it: [cid, user, value, session, groups, meta]."""
    cid, user, rec, session, groups, meta = item[:6]
    rec = str(rec)
    t36, part = rec[:8], rec[8:].partition("\t")[0]
    channel = _channel_name(part, prefixes.get(cid.partition(".")[0], ""))
    return Connection(
        channel_name=channel,
        user=user or None,
        session=session or None,
        connected_at=int(t36, 36) / 1000,
        groups=tuple(groups.split(",")) if groups else (),
        meta=json.loads(meta) if meta else None,
        conn_id=cid,
    )


def _close_notices(node: str, items: Any) -> tuple[dict[str, str], dict[str, int]]:
    """A node's inbox notices ("seq\treason\tcode"): reasons and codes by conn_id."""
    reasons: dict[str, str] = {}
    codes: dict[str, int] = {}
    for item in items or ():
        seq, why, code = str(item).split("\t")
        cid = f"{node}.{seq}"
        reasons[cid] = why
        if code.isdigit():
            codes[cid] = int(code)
    return reasons, codes


def _departures(items: Any, prefixes: Mapping[str, str]) -> tuple[Departure, ...]:
    return tuple(
        Departure(
            _connection(item, prefixes), user_left=_strings(item[6]), went_offline=bool(item[7])
        )
        for item in items or ()
    )


def _prefixes(value: Any) -> dict[str, str]:
    return dict(value) if isinstance(value, dict) else {}


def _absences(items: Any) -> tuple[Absence, ...]:
    return tuple(Absence(str(user), group or None) for user, group in items or ())


def _opt(value: str | None) -> str:
    # Functions take '' for None: user keys, session keys and JSON are never empty.
    return "" if value is None else value


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)


def _meta(meta: dict[str, Any] | None) -> str:
    return "" if meta is None else json.dumps(meta, separators=(",", ":"))


def _group_list(groups: tuple[str, ...]) -> str:
    return ",".join(dict.fromkeys(groups))


def _by_time(conns: list[Connection]) -> tuple[Connection, ...]:
    return tuple(sorted(conns, key=lambda c: (c.connected_at, c.channel_name)))


class RedisStore:
    """Presence in Redis: correct across processes and servers.

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL; extra
    ``connection_kwargs`` (``password``, ``db``, ``socket_timeout``...) go to
    the connection pool of both clients. ``ttl`` is how long a node's
    connections count after its last heartbeat. Needs Redis 7.0 or later.

    With ``sentinels`` (``[(host, port), ...]``) the URL's host is the name
    the sentinels monitor the primary by (``redis://mymaster/0``, as in
    django-redis), and both clients ask the sentinels where the primary is:
    after a failover they reconnect to the promoted replica by themselves.
    ``sentinel_kwargs`` are connection arguments for the sentinels.
    """

    #: Talks to a Redis Cluster (a subclass): a cross-slot error is a bug, not a
    #: missing ``REDIS_CLUSTER`` setting.
    on_cluster = False

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "presence",
        ttl: float = 60.0,
        connection_kwargs: Mapping[str, Any] | None = None,
        grace: float = 0.0,
        reap_budget: int = REAP_BUDGET,
        sentinels: Sequence[tuple[str, int]] | None = None,
        sentinel_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:{}\-]{1,64}", prefix):
            raise ValueError(
                f"Key prefix {prefix!r} must be 1 to 64 ASCII letters, digits or _ . : - {{ }}."
            )
        if not ttl > 0:
            raise ValueError(f"ttl is {ttl!r}; it must be a positive number of seconds.")
        self.url = url
        self.sentinels = tuple((str(host), int(port)) for host, port in sentinels or ())
        self.sentinel_kwargs = None if sentinel_kwargs is None else dict(sentinel_kwargs)
        self.service = ""
        if self.sentinels:
            parts = urlsplit(url)
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError(
                    f"With sentinels, url {_safe_url(url)!r} must be "
                    "'redis://<service name>/<db>' (the host names the monitored primary)."
                )
            self.service = parts.hostname
        self.prefix = prefix
        self.ttl = float(ttl)
        self.grace = float(grace)
        self.reap_budget = int(reap_budget)
        self.key_expiry = math.ceil(self.ttl * KEY_EXPIRY_FACTOR)
        self._kwargs: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            **(connection_kwargs or {}),
            # Our replies are JSON and names: text throughout.
            "decode_responses": True,
        }
        self._base_args = (prefix, repr(self.ttl), repr(self.grace), self.key_expiry)
        #: The channel prefix of each node this process holds (see channel_prefix).
        self._node_prefixes: dict[str, str] = {}
        #: Nodes this process recorded a connection of.
        self._live_nodes: set[str] = set()
        #: Each node's own writes (connects, disconnects, joins, leaves, metadata)
        #: answered so far: a store that counts fewer went back in time (see the beat).
        self._writes: dict[str, int] = {}
        #: The last close notice each node's latest beat reply carried: the
        #: next beat acknowledges it (a lost reply leaves the notices there).
        self._inbox_acks: dict[str, str] = {}
        self._lock = threading.Lock()
        self._sync: redis.Redis | None = None
        #: Closes under way that ``close()`` started on the running loop.
        self._closing: set[asyncio.Task[None]] = set()
        # redis.asyncio connections belong to the loop that opened them, and
        # are closed on it when it ends (a sync twin's own loop, asyncio.run()).
        self._async: PerLoop[redis.asyncio.Redis] = PerLoop(
            lambda loop: self._new_async_client(), close=self._close_async
        )

    def __repr__(self) -> str:
        if self.sentinels:
            return (
                f"RedisStore(service={self.service!r}, sentinels={self._sentinel_list()!r}, "
                f"prefix={self.prefix!r})"
            )
        return f"RedisStore(url={_safe_url(self.url)!r}, prefix={self.prefix!r})"

    @classmethod
    def from_cache_config(
        cls,
        config: Mapping[str, Any],
        settings: PresenceSettings,
        sentinel: SentinelSettings | None = None,
    ) -> RedisStore:
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
        ``sentinel`` (read by :func:`.sentinel.sentinel_settings`) puts the
        store behind Redis Sentinel, as django-redis's ``SentinelClient``.
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
            sentinels=sentinel.sentinels if sentinel else None,
            sentinel_kwargs=sentinel.sentinel_kwargs if sentinel else None,
        )

    # Keys ---------------------------------------------------------------------

    def group_key(self, group: str) -> str:
        """The hash of a group's users (user -> their connections there)."""
        return f"{self.prefix}/g{{{group}}}"

    def group_count_key(self, group: str) -> str:
        """The counter of a group's connections."""
        return f"{self.prefix}/g{{{group}}}/n"

    # Running commands -----------------------------------------------------------

    def _sentinel_list(self) -> str:
        return ", ".join(f"{host}:{port}" for host, port in self.sentinels)

    def _where(self) -> str:
        if self.sentinels:
            return f"Redis service {self.service!r} (Sentinel at {self._sentinel_list()})"
        return f"Redis at {_safe_url(self.url)}"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        where = self._where()
        if isinstance(
            exc, (redis.sentinel.MasterNotFoundError, redis.asyncio.sentinel.MasterNotFoundError)
        ):
            return StoreUnavailable(
                f"{where} is unreachable: no sentinel names a primary for {self.service!r} "
                f"(is the service name right, are the sentinels up, is a failover under "
                f"way?): {exc}"
            )
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            return StoreUnavailable(f"{where} is unreachable: {exc}")
        hint = ""
        if not self.on_cluster and any(sign in str(exc) for sign in _CLUSTER_SIGNS):
            hint = (
                " This Redis is a Redis Cluster node: set CHANNELS_PRESENCE['REDIS_CLUSTER'] "
                "= True so that presence uses a cluster client and one slot a call."
            )
        return StoreUnavailable(f"{where} failed: {type(exc).__name__}: {exc}{hint}")

    def _old_redis(self, exc: ResponseError) -> StoreUnavailable:
        return StoreUnavailable(
            f"{self._where()} refused FUNCTION LOAD ({exc}): the presence "
            "store needs Redis 7.0 or later."
        )

    def _pool_kwargs(self) -> dict[str, Any]:
        # A blocking pool: a burst of connects waits for a free connection
        # (scripts take well under a millisecond) instead of failing as if
        # Redis were down, which a plain pool does past max_connections.
        kwargs = dict(self._kwargs)
        kwargs.setdefault("max_connections", MAX_CONNECTIONS)
        kwargs.setdefault("timeout", SOCKET_TIMEOUT)
        return kwargs

    def _sentinel_pool_kwargs(self) -> dict[str, Any]:
        """The pool arguments of a Sentinel client: the URL's database and
        credentials over ours (redis-py's precedence, as ``from_url``)."""
        kwargs = self._pool_kwargs()
        parts = urlsplit(self.url)
        if parts.username:
            kwargs["username"] = unquote(parts.username)
        if parts.password:
            kwargs["password"] = unquote(parts.password)
        db = parts.path.strip("/") or dict(parse_qsl(parts.query)).get("db", "")
        if db:
            kwargs["db"] = int(db)
        if parts.scheme == "rediss":
            kwargs["ssl"] = True
        return kwargs

    def _sentinel_socket_kwargs(self, retry: Any) -> dict[str, Any]:
        """How to reach the sentinels: ``sentinel_kwargs``, or redis-py's default
        (the data connections' socket timeouts); a sentinel that does not answer
        is not retried (redis-py would, for seconds): the next one is asked."""
        if self.sentinel_kwargs is not None:
            kwargs = dict(self.sentinel_kwargs)
        else:
            kwargs = {k: v for k, v in self._kwargs.items() if k.startswith("socket_")}
        kwargs.setdefault("retry", retry)
        return kwargs

    def _sync_client(self) -> redis.Redis:
        with self._lock:
            if self._sync is None:
                # One quick retry covers a pooled socket that died with a
                # Redis restart (or a primary demoted by a failover, which
                # redis-py's Sentinel connection turns into a connection
                # error); timeouts are not retried, since the script may have run.
                retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
                if self.sentinels:
                    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                        self.sentinels,
                        sentinel_kwargs=self._sentinel_socket_kwargs(Retry(NoBackoff(), 0)),
                    )
                    self._sync = manager.master_for(  # type: ignore[no-untyped-call,unused-ignore]
                        self.service,
                        connection_pool_class=_BlockingSentinelPool,
                        retry=retry,
                        **self._sentinel_pool_kwargs(),
                    )
                else:
                    pool = redis.BlockingConnectionPool.from_url(
                        self.url, retry=retry, **self._pool_kwargs()
                    )
                    self._sync = redis.Redis(connection_pool=pool)
            return self._sync

    def _async_client(self) -> redis.asyncio.Redis:
        try:
            return self._async.get()
        except LoopEnding as exc:
            raise StoreUnavailable(
                f"{self._where()} is not reached from an event loop that is shutting down "
                "(its client is closed)."
            ) from exc

    def _new_async_client(self) -> redis.asyncio.Redis:
        retry = AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if self.sentinels:
            # The sentinels' clients belong to this loop too.
            manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                self.sentinels,
                sentinel_kwargs=self._sentinel_socket_kwargs(AsyncRetry(NoBackoff(), 0)),
            )
            client: redis.asyncio.Redis = manager.master_for(
                self.service,
                connection_pool_class=_AsyncBlockingSentinelPool,
                retry=retry,
                **self._sentinel_pool_kwargs(),
            )
            return client
        apool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url, retry=retry, **self._pool_kwargs()
        )
        return redis.asyncio.Redis(connection_pool=apool)

    def _run(self, op: _Op[T]) -> T:
        client = self._sync_client()
        try:
            try:
                raw = client.execute_command(*op.command)  # type: ignore[no-untyped-call,unused-ignore]
            except ResponseError as exc:
                if "Function not found" not in str(exc):
                    raise
                # First use on this server (or it restarted empty): load, retry.
                try:
                    client.function_load(_SOURCE, replace=True)
                except ResponseError as load_error:
                    raise self._old_redis(load_error) from load_error
                raw = client.execute_command(*op.command)  # type: ignore[no-untyped-call,unused-ignore]
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return op.parse(raw)

    async def _arun(self, op: _Op[T]) -> T:
        client = self._async_client()
        try:
            try:
                raw = await client.execute_command(*op.command)  # type: ignore[no-untyped-call,unused-ignore]
            except ResponseError as exc:
                if "Function not found" not in str(exc):
                    raise
                try:
                    await client.function_load(_SOURCE, replace=True)
                except ResponseError as load_error:
                    raise self._old_redis(load_error) from load_error
                raw = await client.execute_command(*op.command)  # type: ignore[no-untyped-call,unused-ignore]
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return op.parse(raw)

    def _drive(self, steps: Steps[T]) -> T:
        try:
            op = next(steps)
            while True:
                op = steps.send(self._run(op))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _adrive(self, steps: Steps[T]) -> T:
        try:
            op = next(steps)
            while True:
                op = steps.send(await self._arun(op))
        except StopIteration as done:
            result: T = done.value
            return result

    def _fcall(self, name: str, key: str, *args: Any, parse: Callable[[Any], T]) -> _Op[T]:
        return _Op(("FCALL", f"{LIBRARY}_{name}", 1, key, *self._base_args, *args), parse)

    def _fcall_ro(self, name: str, key: str, *args: Any, parse: Callable[[Any], T]) -> _Op[T]:
        return _Op(("FCALL_RO", f"{LIBRARY}_{name}", 1, key, *self._base_args, *args), parse)

    def _user_key(self, user: str) -> str:
        # For routing: the functions build the same key (user_tag in presence.lua).
        if not (len(user) <= 64 and _PLAIN_USER.fullmatch(user)):
            user = "~" + hashlib.sha1(user.encode()).hexdigest()[:24]
        return f"{self.prefix}/u{{{user}}}"

    def _node_key(self, node: str) -> str:
        return f"{self.prefix}/n{{{node}}}"

    def _count_write(self, node: str) -> None:
        self._writes[node] = self._writes.get(node, 0) + 1

    def _holder_key(self, user: str, cid: str) -> str:
        """The hash holding a connection's record: its user's, or its node's anonymous one."""
        if user:
            return self._user_key(user)
        return f"{self.prefix}/n{{{cid.partition('.')[0]}}}/a"

    def _prefix_of(self, node: str, channel: str = "") -> str:
        prefix = self._node_prefixes.get(node)
        if prefix is None:
            prefix = self._node_prefixes.setdefault(node, channel_prefix(channel))
        return prefix

    @staticmethod
    def _check_id(connection: Connection) -> str:
        if not _CONN_ID.fullmatch(connection.conn_id):
            raise ValueError(
                f"Connection {connection.channel_name!r} has conn_id {connection.conn_id!r}; "
                "the Redis store needs '<node>.<seq>' (letters and digits, seq in base 36)."
            )
        return connection.conn_id

    # Operations -----------------------------------------------------------------
    #
    # The *_steps generators are what the public methods drive; on one Redis
    # most are a single call. The cluster store (cluster.py) overrides them
    # with per-slot steps.

    def _disconnect_steps(self, connection: Connection) -> Steps[Departure | None]:
        reply: Departure | None = yield self._disconnect_op(connection)
        return reply

    def _refresh_steps(self, node: str, audit: tuple[Connection, ...] = ()) -> Steps[RefreshResult]:
        reply: RefreshResult = yield self._refresh_op(node, audit)
        return reply

    def _retire_steps(self, node: str) -> Steps[bool]:
        # Each call looks through a bounded number of the node's buckets.
        while (reply := (yield self._retire_op(node))) == RETIRE_AGAIN:
            pass
        if reply:
            self._forget_node(node)
        return bool(reply)

    def _forget_node(self, node: str) -> None:
        """The store forgot a retired node: should its loop connect again, the
        node starts afresh (else its next beat would take it for lost)."""
        self._live_nodes.discard(node)
        self._writes.pop(node, None)

    def _settle_steps(self) -> Steps[tuple[Absence, ...]]:
        reply: tuple[Absence, ...] = yield self._settle_op()
        return reply

    def _sizes_steps(self, groups: tuple[str, ...]) -> Steps[dict[str, int]]:
        reply: dict[str, int] = yield self._sizes_op(groups)
        return reply

    def _user_connections_steps(self, user: str) -> Steps[tuple[Connection, ...]]:
        reply: tuple[Connection, ...] = yield self._user_connections_op(user)
        return reply

    def _connect_steps(self, connection: Connection, policy: SessionPolicy) -> Steps[ConnectResult]:
        cid = self._check_id(connection)
        node = connection.node
        fresh = node not in self._live_nodes
        prefix = self._prefix_of(node, connection.channel_name)
        at = "" if not connection.connected_at else str(round(connection.connected_at * 1000))
        reply = yield self._fcall(
            "connect",
            self._user_key(connection.user or ""),
            cid,
            _opt(connection.user),
            _opt(connection.session),
            _group_list(connection.groups),
            _meta(connection.meta),
            _limit(policy.max_sessions),
            policy.scope,
            policy.on_limit,
            at,
            prefix,
            _channel_part(connection.channel_name, prefix),
            _limit(policy.max_connections),
            policy.close_code,
            "1" if fresh else "",
            str(round(connection.opened_at * 1000)) if connection.opened_at else "",
            parse=json.loads,
        )
        status = reply[0]
        if status != 1:
            refused = {0: "limit", -1: "counted_out", -2: "connections", -3: "logged_out"}[status]
            return ConnectResult(accepted=False, refused=refused)
        # The node's first connect marks it live; later ones must not (see beat).
        self._live_nodes.add(node)
        self._count_write(node)
        _, came_online, joined, evicted, t_ms, sessions, prefixes = reply
        departures = list(_departures(evicted, _prefixes(prefixes)))
        # Whole sessions taken over by this one: removed in bounded batches.
        for session in sessions or ():
            more = yield from self._disconnect_user_steps(
                str(connection.user), str(session), "superseded", policy.close_code
            )
            departures.extend(more)
        return ConnectResult(
            accepted=True,
            evicted=tuple(departures),
            came_online=bool(came_online),
            user_joined=_strings(joined),
            connected_at=int(t_ms) / 1000,
        )

    def _disconnect_op(self, connection: Connection) -> _Op[Departure | None]:
        node = connection.node

        def parse(raw: str) -> Departure | None:
            self._count_write(node)
            dep, prefixes = json.loads(raw)
            if not dep:
                return None
            if not dep[2]:
                # Its record was lost: it left the groups its node knew of.
                return Departure(connection, user_left=_strings(dep[6]), went_offline=bool(dep[7]))
            return _departures([dep], _prefixes(prefixes))[0]

        cid = self._check_id(connection)
        user = _opt(connection.user)
        groups = _group_list(connection.groups)
        return self._fcall("disconnect", self._user_key(user), cid, user, groups, parse=parse)

    def _membership_steps(
        self, name: str, connection: Connection, groups: tuple[str, ...]
    ) -> Steps[tuple[str, ...]]:
        changed: list[str] = []
        unique = tuple(dict.fromkeys(groups))
        for start in range(0, max(1, len(unique)), GROUPS_BATCH):
            changed.extend(
                (yield self._groups_op(name, connection, unique[start : start + GROUPS_BATCH]))
            )
        return tuple(changed)

    def _groups_op(
        self, name: str, connection: Connection, groups: tuple[str, ...]
    ) -> _Op[tuple[str, ...]]:
        def parse(raw: str) -> tuple[str, ...]:
            changed = json.loads(raw)
            if changed is not False:  # recorded: the store counted a write
                self._count_write(connection.node)
            return _strings(changed)

        cid = self._check_id(connection)
        user = _opt(connection.user)
        return self._fcall(name, self._user_key(user), cid, user, _group_list(groups), parse=parse)

    def _set_meta_op(self, connection: Connection, meta: dict[str, Any] | None) -> _Op[bool]:
        def parse(raw: Any) -> bool:
            if raw:  # recorded: the store counted a write
                self._count_write(connection.node)
            return bool(raw)

        cid = self._check_id(connection)
        user = _opt(connection.user)
        return self._fcall(
            "set_meta", self._holder_key(user, cid), cid, user, _meta(meta), parse=parse
        )

    def _refresh_op(self, node: str, audit: tuple[Connection, ...]) -> _Op[RefreshResult]:
        def parse(raw: str) -> RefreshResult:
            reply = json.loads(raw)
            if reply[0] == 2:
                self._inbox_acks.pop(node, None)
                return RefreshResult(counted_out=True)
            state, closed, expired, settled, more, next_check, prefixes, broken = reply
            self._ack_inbox(node, closed)
            reasons, codes = _close_notices(node, closed)
            return RefreshResult(
                closed=tuple(reasons),
                close_reasons=reasons,
                close_codes=codes,
                expired=_departures(expired, _prefixes(prefixes)),
                settled=_absences(settled),
                lost=state == 1,
                more=bool(more),
                next_check=None if next_check < 0 else float(next_check),
                broken=tuple(f"{node}.{seq}" for seq in broken or ()),
            )

        checked = [
            [self._check_id(c).partition(".")[2], _opt(c.user)] for c in audit if c.node == node
        ]

        return self._fcall(
            "beat",
            self._node_key(node),
            node,
            self._prefix_of(node),
            INBOX_BATCH,
            self.reap_budget,
            SETTLE_BATCH,
            self._writes.get(node, 0),
            json.dumps(checked[:AUDIT_BATCH], separators=(",", ":")),
            self._inbox_acks.get(node, ""),
            parse=parse,
        )

    def _ack_inbox(self, node: str, closed: Sequence[str]) -> None:
        """The notices of a reply that reached this process: the next beat takes them off."""
        self._inbox_acks[node] = closed[-1] if closed else ""

    def _restore_steps(
        self, connections: tuple[Connection, ...], policy: SessionPolicy, function: str = "restore"
    ) -> Steps[RestoreResult]:
        restored = 0
        refused: list[str] = []
        logged_out: list[str] = []
        by_node: dict[str, list[Connection]] = {}
        for c in connections:
            self._check_id(c)
            by_node.setdefault(c.node, []).append(c)
        for node, conns in by_node.items():
            prefix = self._prefix_of(node, conns[0].channel_name)
            for start in range(0, len(conns), RESTORE_BATCH):
                items = [
                    [
                        c.conn_id,
                        _opt(c.user),
                        _opt(c.session),
                        round(c.connected_at * 1000),
                        _group_list(c.groups),
                        _meta(c.meta),
                        _channel_part(c.channel_name, prefix),
                        round(c.opened_at * 1000) if c.opened_at else "",
                    ]
                    for c in conns[start : start + RESTORE_BATCH]
                ]
                count, ids, fenced = yield self._fcall(
                    function,
                    self._node_key(node),
                    node,
                    prefix,
                    _limit(policy.max_sessions),
                    policy.scope,
                    _limit(policy.max_connections),
                    json.dumps(items, separators=(",", ":")),
                    policy.on_limit,
                    policy.close_code,
                    parse=json.loads,
                )
                restored += int(count)
                refused.extend(_strings(ids))
                logged_out.extend(_strings(fenced))
        return RestoreResult(
            restored=restored, refused=tuple(refused), logged_out=tuple(logged_out)
        )

    def _fence_op(self, user: str, session: str | None) -> _Op[Any]:
        return self._fcall(
            "fence", self._user_key(user), user, _opt(session), FENCE_SECONDS, parse=lambda r: r
        )

    def _reset_steps(self, node: str) -> Steps[None]:
        while not (
            yield self._fcall(
                "reset", self._node_key(node), node, self.reap_budget, parse=lambda r: bool(r)
            )
        ):
            pass

    def _retire_op(self, node: str) -> _Op[int]:
        return self._fcall("retire", self._node_key(node), node, parse=int)

    def _disconnect_user_steps(
        self, user: str, session: str | None, reason: str, code: int | None
    ) -> Steps[tuple[Departure, ...]]:
        found: list[Departure] = []
        cursor = "0"
        while True:
            cursor, deps, prefixes = yield self._fcall(
                "disconnect_user",
                self._user_key(user),
                user,
                _opt(session),
                reason,
                "" if code is None else code,
                cursor,
                USER_BATCH,
                parse=json.loads,
            )
            found.extend(_departures(deps, _prefixes(prefixes)))
            if str(cursor) == "0":
                return tuple(sorted(found, key=lambda d: d.connection.connected_at))

    def _settle_op(self) -> _Op[tuple[Absence, ...]]:
        return self._fcall(
            "settle",
            f"{self.prefix}/{{~}}pending",
            SETTLE_BATCH,
            parse=lambda raw: _absences(json.loads(raw)[0]),
        )

    def _sweep_steps(self) -> Steps[tuple[Departure, ...]]:
        found: list[Departure] = []
        while True:
            deps, more, prefixes = yield self._fcall(
                "reap", f"{self.prefix}/{{~}}nodes", self.reap_budget, parse=json.loads
            )
            found.extend(_departures(deps, _prefixes(prefixes)))
            if not more:
                return tuple(found)

    def _user_connections_op(self, user: str) -> _Op[tuple[Connection, ...]]:
        def parse(raw: str) -> tuple[Connection, ...]:
            items, prefixes = json.loads(raw)
            return _by_time([_connection(i, _prefixes(prefixes)) for i in items or ()])

        return self._fcall_ro("user_connections", self._user_key(user), user, parse=parse)

    def _group_connections_steps(self, group: str) -> Steps[tuple[Connection, ...]]:
        found: list[Connection] = []
        users, anonymous = "0", "0"
        while users or anonymous:
            users, anonymous, items, prefixes = yield self._fcall_ro(
                "group_connections",
                self.group_key(group),
                group,
                users,
                MEMBERS_BATCH,
                anonymous,
                parse=json.loads,
            )
            found.extend(_connection(i, _prefixes(prefixes)) for i in items or ())
        # A user's connection seen on two pages (HSCAN may repeat) counts once.
        unique = {c.conn_id: c for c in found}
        return _by_time(list(unique.values()))

    def _group_users_steps(self, group: str) -> Steps[tuple[str, ...]]:
        found: dict[str, None] = {}
        cursor = "0"
        while True:
            cursor, flat = yield _Op(
                ("HSCAN", self.group_key(group), cursor, "COUNT", READ_BATCH), parse=lambda r: r
            )
            found.update(dict.fromkeys(flat[0::2] if isinstance(flat, list) else flat))
            if str(cursor) == "0":
                return tuple(found)

    def _groups_steps(self) -> Steps[dict[str, int]]:
        found: dict[str, int] = {}
        after = ""
        while True:
            page = yield self._fcall_ro(
                "groups", f"{self.prefix}/{{~}}groups", after, READ_BATCH, parse=json.loads
            )
            for group, size in page or ():
                if int(size) > 0:
                    found[str(group)] = int(size)
            if len(page or ()) < READ_BATCH:
                return dict(sorted(found.items()))
            after = str(page[-1][0])

    def _count_op(self, group: str) -> _Op[int]:
        return _Op(("GET", self.group_count_key(group)), parse=lambda r: int(r or 0))

    def _group_count_op(self) -> _Op[int]:
        # The registry lists exactly the groups whose count is positive.
        return _Op(("ZCARD", f"{self.prefix}/{{~}}groups"), parse=int)

    def _user_count_op(self, group: str) -> _Op[int]:
        return _Op(("HLEN", self.group_key(group)), parse=int)

    def _sizes_op(self, groups: tuple[str, ...]) -> _Op[dict[str, int]]:
        return _Op(
            ("MGET", *map(self.group_count_key, groups)),
            parse=lambda r: {g: int(n or 0) for g, n in zip(groups, r, strict=True)},
        )

    # Writes -------------------------------------------------------------------

    async def aconnect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        """Record ``connection``, apply ``policy`` and join its groups, atomically."""
        return await self._adrive(self._connect_steps(connection, policy))

    def connect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        """Sync twin of :meth:`aconnect`."""
        return self._drive(self._connect_steps(connection, policy))

    async def adisconnect(self, connection: Connection) -> Departure | None:
        """Remove a connection from everything; ``None`` if it was not there."""
        return await self._adrive(self._disconnect_steps(connection))

    def disconnect(self, connection: Connection) -> Departure | None:
        """Sync twin of :meth:`adisconnect`."""
        return self._drive(self._disconnect_steps(connection))

    async def ajoin(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Add a recorded connection to groups; return those the user newly joined."""
        return await self._adrive(self._membership_steps("join", connection, groups))

    def join(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Sync twin of :meth:`ajoin`."""
        return self._drive(self._membership_steps("join", connection, groups))

    async def aleave(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Remove a connection from groups; return those the user no longer is in."""
        return await self._adrive(self._membership_steps("leave", connection, groups))

    def leave(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Sync twin of :meth:`aleave`."""
        return self._drive(self._membership_steps("leave", connection, groups))

    async def aset_meta(self, connection: Connection, meta: dict[str, Any] | None) -> bool:
        """Replace a connection's metadata; ``False`` if it is not recorded."""
        return await self._arun(self._set_meta_op(connection, meta))

    def set_meta(self, connection: Connection, meta: dict[str, Any] | None) -> bool:
        """Sync twin of :meth:`aset_meta`."""
        return self._run(self._set_meta_op(connection, meta))

    async def arefresh(self, node: str, audit: tuple[Connection, ...] = ()) -> RefreshResult:
        """Keep ``node`` alive: one ``ZADD`` plus bounded chores, in one round trip.

        ``audit``: some of the node's live connections (``AUDIT_BATCH`` at
        most are checked) whose keys are checked for losses (``broken``).
        """
        return await self._adrive(self._refresh_steps(node, audit))

    def refresh(self, node: str, audit: tuple[Connection, ...] = ()) -> RefreshResult:
        """Sync twin of :meth:`arefresh`."""
        return self._drive(self._refresh_steps(node, audit))

    async def arepair(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult:
        """Put back what the store lost of live connections, under ``policy``'s limits."""
        return await self._adrive(self._restore_steps(connections, policy, "repair"))

    def repair(self, connections: tuple[Connection, ...], policy: SessionPolicy) -> RestoreResult:
        """Sync twin of :meth:`arepair`."""
        return self._drive(self._restore_steps(connections, policy, "repair"))

    async def arestore(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult:
        """Write back connections the store lost, in batches of ``RESTORE_BATCH``."""
        return await self._adrive(self._restore_steps(connections, policy))

    def restore(self, connections: tuple[Connection, ...], policy: SessionPolicy) -> RestoreResult:
        """Sync twin of :meth:`arestore`."""
        return self._drive(self._restore_steps(connections, policy))

    async def areset(self, node: str) -> None:
        """Remove ``node``'s own connections quietly, in batches, before a write-back."""
        await self._adrive(self._reset_steps(node))

    def reset(self, node: str) -> None:
        """Sync twin of :meth:`areset`."""
        self._drive(self._reset_steps(node))

    async def aretire(self, node: str) -> bool:
        """Forget a node that stops with no connection left."""
        return await self._adrive(self._retire_steps(node))

    def retire(self, node: str) -> bool:
        """Sync twin of :meth:`aretire`."""
        return self._drive(self._retire_steps(node))

    async def afence(self, user: str, session: str | None = None) -> None:
        """Refuse the connects a logout must stop (see the protocol)."""
        await self._arun(self._fence_op(user, session))

    def fence(self, user: str, session: str | None = None) -> None:
        """Sync twin of :meth:`afence`."""
        self._run(self._fence_op(user, session))

    async def adisconnect_user(
        self,
        user: str,
        session: str | None = None,
        reason: str = "kicked",
        code: int | None = None,
    ) -> tuple[Departure, ...]:
        """Remove every connection of ``user`` (of one session, if given), in batches."""
        return await self._adrive(self._disconnect_user_steps(user, session, reason, code))

    def disconnect_user(
        self,
        user: str,
        session: str | None = None,
        reason: str = "kicked",
        code: int | None = None,
    ) -> tuple[Departure, ...]:
        """Sync twin of :meth:`adisconnect_user`."""
        return self._drive(self._disconnect_user_steps(user, session, reason, code))

    async def asettle(self) -> tuple[Absence, ...]:
        """Claim the departures whose leave grace has run out (exactly once overall)."""
        return await self._adrive(self._settle_steps())

    def settle(self) -> tuple[Absence, ...]:
        """Sync twin of :meth:`asettle`."""
        return self._drive(self._settle_steps())

    async def asweep(self) -> tuple[Departure, ...]:
        """Remove every connection of every dead node now, in bounded batches."""
        return await self._adrive(self._sweep_steps())

    def sweep(self) -> tuple[Departure, ...]:
        """Sync twin of :meth:`asweep`."""
        return self._drive(self._sweep_steps())

    # Reads --------------------------------------------------------------------

    async def agroup_size(self, group: str) -> int:
        """Live connections in ``group``: one ``GET``."""
        return await self._arun(self._count_op(group))

    def group_size(self, group: str) -> int:
        """Sync twin of :meth:`agroup_size`."""
        return self._run(self._count_op(group))

    async def agroup_user_count(self, group: str) -> int:
        """Distinct users with a live connection in ``group``: one ``HLEN``."""
        return await self._arun(self._user_count_op(group))

    def group_user_count(self, group: str) -> int:
        """Sync twin of :meth:`agroup_user_count`."""
        return self._run(self._user_count_op(group))

    async def agroup_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        """Live connections of many groups: one ``MGET``."""
        return await self._adrive(self._sizes_steps(groups)) if groups else {}

    def group_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        """Sync twin of :meth:`agroup_sizes`."""
        return self._drive(self._sizes_steps(groups)) if groups else {}

    async def agroup_members(self, group: str) -> tuple[GroupMember, ...]:
        """The users present in ``group`` with their connections there, in pages."""
        return _members(await self._adrive(self._group_connections_steps(group)))

    def group_members(self, group: str) -> tuple[GroupMember, ...]:
        """Sync twin of :meth:`agroup_members`."""
        return _members(self._drive(self._group_connections_steps(group)))

    async def agroup_users(self, group: str) -> tuple[str, ...]:
        """The users with a connection in ``group``, in ``HSCAN`` pages."""
        return await self._adrive(self._group_users_steps(group))

    def group_users(self, group: str) -> tuple[str, ...]:
        """Sync twin of :meth:`agroup_users`."""
        return self._drive(self._group_users_steps(group))

    async def auser_connections(self, user: str) -> tuple[Connection, ...]:
        """A user's connections, oldest first."""
        return await self._adrive(self._user_connections_steps(user))

    def user_connections(self, user: str) -> tuple[Connection, ...]:
        """Sync twin of :meth:`auser_connections`."""
        return self._drive(self._user_connections_steps(user))

    async def agroups(self) -> dict[str, int]:
        """Every group with at least one connection, with its size, in pages."""
        return await self._adrive(self._groups_steps())

    def groups(self) -> dict[str, int]:
        """Sync twin of :meth:`agroups`."""
        return self._drive(self._groups_steps())

    async def agroup_count(self) -> int:
        """How many groups have a connection: one ``ZCARD``."""
        return await self._arun(self._group_count_op())

    def group_count(self) -> int:
        """Sync twin of :meth:`agroup_count`."""
        return self._run(self._group_count_op())

    # Lifecycle ------------------------------------------------------------------

    @staticmethod
    async def _close_async(client: Any) -> None:
        await _close_async_client(client)

    @staticmethod
    def _close_sync(client: Any) -> None:
        client.close()
        # A pool handed to the client is not closed with it.
        client.connection_pool.disconnect()
        manager = getattr(client.connection_pool, "sentinel_manager", None)
        if manager is not None:
            manager.close()

    async def aclose(self) -> None:
        """Close this loop's client and the sync one; others are closed on their loops."""
        mine = self._async.pop()
        if mine is not None:
            await self._close_async(mine)
        self.close()

    def close(self) -> None:
        """Close every client. Async ones are closed on their own loops when
        those still run; a closed loop closed its client as it shut down."""
        with self._lock:
            sync, self._sync = self._sync, None
        clients = self._async.pop_all()
        if sync is not None:
            self._close_sync(sync)
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, entry in clients:
            if loop.is_closed():
                continue
            if loop is current:
                # Called from sync code inside this loop: cannot wait here.
                self._closing.add(loop.create_task(self._close_async(entry)))
                self._closing = {t for t in self._closing if not t.done()}
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(self._close_async(entry), loop)
            else:
                loop.run_until_complete(self._close_async(entry))


async def _close_async_client(client: redis.asyncio.Redis) -> None:
    """Close a client and its pool's connections (a pool handed to it stays open)."""
    await client.aclose()
    await client.connection_pool.disconnect()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        await manager.aclose()


def _members(conns: tuple[Connection, ...]) -> tuple[GroupMember, ...]:
    by_user: dict[str | None, list[Connection]] = {}
    for conn in conns:
        by_user.setdefault(conn.user, []).append(conn)
    members = [GroupMember(user, tuple(cs)) for user, cs in by_user.items()]
    # Longest present first; anonymous connections after the users.
    members.sort(key=lambda m: (m.user is None, m.connections[0].connected_at))
    return tuple(members)
