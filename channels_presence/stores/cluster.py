"""The Redis store on a Redis Cluster: every call on one slot, steps pipelined per node.

On one Redis, a connect is one function call that writes the user's record,
the node's bucket and each group at once. On a cluster those keys live in
different slots (each user, group and node has its own hash tag, so presence
spreads over every primary), and a script may touch one slot only. This
store runs the same operations as a few per-slot steps (the ``c_*``
functions of ``presence.lua``, whose header gives their order), sending the
calls of one step to every node they concern in one pipelined round trip.

What stays atomic: everything about one user (the session limit, the
per-user connection limit, a logout fence), one group's counts, one node's
buckets. What is eventually consistent: a connection is in its user's record
a few milliseconds before it is counted in its groups, and group counts,
the group registry (``groups()``) and leave-grace notices catch up within
the same operation. Every step is safe to replay, so a reaper that dies
half-way leaves work the next one completes.

A key prefix that is itself a hash tag (``{presence}``) keeps every key in
one slot: the store then runs the one-call functions through the cluster
client, on one primary.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio.cluster
import redis.cluster
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..conf import PresenceSettings
from ..exceptions import StoreUnavailable
from ..loops import PerLoop
from .base import (
    Absence,
    Connection,
    ConnectResult,
    Departure,
    RefreshResult,
    RestoreResult,
    SessionPolicy,
)
from .redis import (
    _SOURCE,
    GROUPS_BATCH,
    INBOX_BATCH,
    MEMBERS_BATCH,
    READ_BATCH,
    RETIRE_AGAIN,
    SETTLE_BATCH,
    USER_BATCH,
    RedisStore,
    Steps,
    T,
    _absences,
    _by_time,
    _channel_part,
    _close_notices,
    _connection,
    _departures,
    _group_list,
    _limit,
    _meta,
    _Op,
    _opt,
    _safe_url,
    _strings,
)
from .sentinel import SentinelSettings

__all__ = ["ClusterRedisStore"]

#: Connections one reaper step takes from a dead node (one bucket at most).
REAP_BATCH = 128
#: Shards of the pending departures (P/{~p<k>}pending): a user's go to one,
#: so the leave grace of a busy site spreads over the primaries.
PENDING_SHARDS = 16
#: Channel prefixes of other nodes remembered (departures name their channels).
PREFIX_CACHE = 10_000
_FCALLS = ("FCALL", "FCALL_RO")
_TAGGED = re.compile(r"[^{]*\{[^}]+\}.*")


class _Flags(dict[tuple[str, str], int]):
    """c_group's flags by (cid, group), and the time each group's slot answered."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, str] = {}

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        super().update(other, **kwargs)
        if isinstance(other, _Flags):
            self.versions.update(other.versions)


@dataclass(frozen=True)
class _Enlist:
    """A connection to put in its node's bucket: the step that comes first.

    On an event loop, the enlists of one node are sent one call at a time:
    those that arrive while one is under way go together in the next (a busy
    process writes its node's slot once per round trip, not once a connect).
    """

    node: str
    cid: str
    user: str
    prefix: str
    fresh: bool


@dataclass
class _EnlistQueue:
    waiting: list[tuple[_Enlist, asyncio.Future[int]]]
    busy: bool = False


@dataclass(frozen=True)
class _Batch:
    """Commands for several slots, sent pipelined: one round trip per node."""

    ops: tuple[_Op[Any], ...]


def _split(value: Any) -> list[str]:
    return [g for g in str(value or "").split(",") if g]


def _session_of(rec: str) -> str | None:
    """The session key kept in a record's value (see presence.lua), or None."""
    tab = rec.find("\t", 8)
    return rec[tab + 1 :] if tab >= 0 else None


def _records(user: str | None, flat: Mapping[str, str]) -> list[list[Any]]:
    """A holder hash as the functions reply records: [cid, user, rec, session, groups, meta]."""
    out = []
    for field, rec in flat.items():
        if "." not in field or "|" in field:
            continue
        session = _session_of(rec) or False
        out.append(
            [field, user or False, rec, session, flat.get(f"{field}|g"), flat.get(f"{field}|m")]
        )
    return out


class ClusterRedisStore(RedisStore):
    """Presence on a Redis Cluster (``CHANNELS_PRESENCE["REDIS_CLUSTER"] = True``).

    ``url`` is one node of the cluster and ``seeds`` any others: redis-py's
    cluster client (sync and asyncio) finds the rest. The function library is
    loaded on every primary, and again on a primary that lacks it (a new or
    promoted one).
    """

    on_cluster = True

    def __init__(self, url: str = "redis://localhost:6379/0", **kwargs: Any) -> None:
        seeds = kwargs.pop("seeds", ())
        super().__init__(url, **kwargs)
        self.seeds: tuple[str, ...] = ()
        self._set_seeds(seeds)
        # A prefix that is a hash tag puts every key in one slot: one call will do.
        self.per_slot = not _TAGGED.fullmatch(self.prefix)
        self._other_prefixes: dict[str, str] = {}
        #: Seqs of each node's own disconnects whose bucket entries are still
        #: to go: they ride on the node's next call (c_enlist, c_beat, c_retire).
        self._dropped: dict[str, list[str]] = {}
        #: Pending-departure shards this process wrote to since it last claimed.
        self._marked: set[str] = set()
        #: Async clients whose slots map was read (see _ready_client).
        self._ready: weakref.WeakSet[Any] = weakref.WeakSet()
        self._starting: PerLoop[asyncio.Lock] = PerLoop(lambda loop: asyncio.Lock())
        self._enlists: PerLoop[dict[str, _EnlistQueue]] = PerLoop(lambda loop: {})
        self._senders: set[asyncio.Future[None]] = set()

    def _set_seeds(self, seeds: Iterable[str]) -> None:
        self.seeds = (self.url, *(s for s in seeds if s != self.url))
        for seed in self.seeds:
            db = urlsplit(seed).path.strip("/")
            if db not in ("", "0"):
                raise ImproperlyConfigured(
                    f"Redis Cluster node {_safe_url(seed)} names database {db}; a cluster "
                    f"has database 0 only: drop the /{db} from the cache's LOCATION."
                )
        if self._kwargs.get("db") not in (None, 0):
            raise ImproperlyConfigured(
                f"The presence cache selects database {self._kwargs['db']!r}; a Redis "
                "Cluster has database 0 only: drop DB (or db) from its OPTIONS."
            )

    def __repr__(self) -> str:
        return f"ClusterRedisStore(url={_safe_url(self.url)!r}, prefix={self.prefix!r})"

    @classmethod
    def from_cache_config(
        cls,
        config: Mapping[str, Any],
        settings: PresenceSettings,
        sentinel: SentinelSettings | None = None,
    ) -> ClusterRedisStore:
        """As :meth:`RedisStore.from_cache_config`; every ``LOCATION`` is a seed node.

        A cluster fails over by itself: ``sentinel`` must be ``None``.
        """
        if sentinel is not None:
            raise ImproperlyConfigured(
                "The presence cache is configured for Sentinel, but REDIS_CLUSTER is True: "
                "a Redis Cluster fails over by itself; use one or the other."
            )
        store = super().from_cache_config(config, settings)
        assert isinstance(store, ClusterRedisStore)
        location = config.get("LOCATION") or store.url
        if isinstance(location, str):
            seeds = [loc.strip() for loc in re.split("[;,]", location) if loc.strip()]
        else:
            seeds = [str(loc) for loc in location]
        store._set_seeds(seeds)
        return store

    # Clients ------------------------------------------------------------------------

    def _cluster_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self._kwargs.items() if k != "db"}
        parts = urlsplit(self.url)
        if parts.username and "username" not in kwargs:
            kwargs["username"] = parts.username
        if parts.password and "password" not in kwargs:
            kwargs["password"] = parts.password
        if parts.scheme == "rediss":
            kwargs.setdefault("ssl", True)
        return kwargs

    def _nodes(self, node_class: Any) -> list[Any]:
        return [
            node_class(urlsplit(seed).hostname or "localhost", urlsplit(seed).port or 6379)
            for seed in self.seeds
        ]

    @staticmethod
    def _local_keys(client: Any, asynchronous: bool) -> Any:
        """``client``, reading the key of an FCALL from the call itself.

        redis-py reads EVAL's keys from its arguments but asks the server
        (``COMMAND GETKEYS``, a round trip of its own) for FCALL's: that
        doubled the calls of every step. Our calls name their one key in
        KEYS[1], so the slot is known locally; other commands are untouched.
        """
        parser = client.commands_parser
        original = parser.get_keys
        if asynchronous:

            async def aget_keys(*args: Any) -> Any:
                if str(args[0]).upper() in _FCALLS:
                    return tuple(args[3 : 3 + int(args[2])])
                return await original(*args)

            parser.get_keys = aget_keys
        else:

            def get_keys(connection: Any, *args: Any) -> Any:
                if str(args[0]).upper() in _FCALLS:
                    return list(args[3 : 3 + int(args[2])])
                return original(connection, *args)

            parser.get_keys = get_keys
        return client

    def _sync_client(self) -> Any:
        with self._lock:
            if self._sync is None:
                try:
                    self._sync = self._local_keys(
                        redis.cluster.RedisCluster(
                            startup_nodes=self._nodes(redis.cluster.ClusterNode),
                            **self._cluster_kwargs(),
                        ),
                        asynchronous=False,
                    )
                except RedisClusterException as exc:
                    raise self._not_a_cluster(exc) from exc
                except RedisError as exc:
                    raise self._unavailable(exc) from exc
            return self._sync

    def _new_async_client(self) -> Any:
        return self._local_keys(
            redis.asyncio.cluster.RedisCluster(
                startup_nodes=self._nodes(redis.asyncio.cluster.ClusterNode),
                **self._cluster_kwargs(),
            ),
            asynchronous=True,
        )

    @staticmethod
    async def _close_async(client: Any) -> None:
        await client.aclose()

    @staticmethod
    def _close_sync(client: Any) -> None:
        client.close()

    def _not_a_cluster(self, exc: Exception) -> StoreUnavailable:
        text = str(exc)
        if "not enabled" in text or "cluster_enabled" in text:
            return StoreUnavailable(
                f"Redis at {_safe_url(self.url)} is not a Redis Cluster node ({text}): set "
                "CHANNELS_PRESENCE['REDIS_CLUSTER'] = False, or point the cache at the cluster."
            )
        return StoreUnavailable(f"Redis Cluster at {_safe_url(self.url)} failed: {text}")

    # Running commands -----------------------------------------------------------------

    def _fail(self, exc: Exception) -> StoreUnavailable:
        if isinstance(exc, RedisClusterException):
            return self._not_a_cluster(exc)
        return self._unavailable(exc)

    @staticmethod
    def _missing_function(reply: Any) -> bool:
        return isinstance(reply, ResponseError) and "Function not found" in str(reply)

    def _load(self, client: Any) -> None:
        try:
            client.function_load(_SOURCE, replace=True)
        except ResponseError as exc:
            raise self._old_redis(exc) from exc

    async def _aload(self, client: Any) -> None:
        try:
            await client.function_load(_SOURCE, replace=True)
        except ResponseError as exc:
            raise self._old_redis(exc) from exc

    def _run(self, op: _Op[T]) -> T:
        client = self._sync_client()
        try:
            try:
                raw = client.execute_command(*op.command)
            except ResponseError as exc:
                if not self._missing_function(exc):
                    raise
                # A primary without the library: a new one, or a replica promoted.
                self._load(client)
                raw = client.execute_command(*op.command)
        except (RedisError, RedisClusterException) as exc:
            raise self._fail(exc) from exc
        return op.parse(raw)

    async def _ready_client(self) -> Any:
        """This loop's cluster client, its view of the cluster read once.

        Many first calls at once (a burst of connects on a fresh process) must
        not each open the nodes' connections while the client still learns
        the slots: the first initializes, the others wait for it.
        """
        client = self._async_client()
        if client in self._ready:
            return client
        async with self._starting.get():
            if client not in self._ready:
                await client.initialize()
                self._ready.add(client)
        return client

    async def _arun(self, op: _Op[T]) -> T:
        try:
            client = await self._ready_client()
            try:
                raw = await client.execute_command(*op.command)
            except ResponseError as exc:
                if not self._missing_function(exc):
                    raise
                await self._aload(client)
                raw = await client.execute_command(*op.command)
        except (RedisError, RedisClusterException) as exc:
            raise self._fail(exc) from exc
        return op.parse(raw)

    def _pipelined(self, batch: _Batch) -> list[Any]:
        client = self._sync_client()
        try:
            replies = self._send(client, batch.ops)
            if any(self._missing_function(r) for r in replies):
                self._load(client)
                again = [i for i, r in enumerate(replies) if self._missing_function(r)]
                for i, reply in zip(
                    again, self._send(client, [batch.ops[i] for i in again]), strict=True
                ):
                    replies[i] = reply
        except (RedisError, RedisClusterException) as exc:
            raise self._fail(exc) from exc
        return self._parse_all(batch, replies)

    async def _apipelined(self, batch: _Batch) -> list[Any]:
        try:
            client = await self._ready_client()
            replies = await self._asend(client, batch.ops)
            if any(self._missing_function(r) for r in replies):
                await self._aload(client)
                again = [i for i, r in enumerate(replies) if self._missing_function(r)]
                redo = await self._asend(client, [batch.ops[i] for i in again])
                for i, reply in zip(again, redo, strict=True):
                    replies[i] = reply
        except (RedisError, RedisClusterException) as exc:
            raise self._fail(exc) from exc
        return self._parse_all(batch, replies)

    @staticmethod
    def _send(client: Any, ops: Sequence[_Op[Any]]) -> list[Any]:
        pipe = client.pipeline()
        for op in ops:
            pipe.execute_command(*op.command)
        return list(pipe.execute(raise_on_error=False))

    @staticmethod
    async def _asend(client: Any, ops: Sequence[_Op[Any]]) -> list[Any]:
        pipe = client.pipeline()
        for op in ops:
            pipe.execute_command(*op.command)
        return list(await pipe.execute(raise_on_error=False))

    def _parse_all(self, batch: _Batch, replies: list[Any]) -> list[Any]:
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._fail(reply) from reply
        return [op.parse(reply) for op, reply in zip(batch.ops, replies, strict=True)]

    def _enlist_op(self, items: Sequence[_Enlist]) -> _Op[int]:
        first = items[0]
        return self._node_op(
            "c_enlist",
            first.node,
            first.prefix,
            "1" if any(i.fresh for i in items) else "",
            len(items),
            *(x for i in items for x in (i.cid, i.user)),
            parse=int,
        )

    async def _aenlist(self, item: _Enlist) -> int:
        """Enlist through the loop's queue for the node (see _Enlist)."""
        queues = self._enlists.get()
        queue = queues.setdefault(item.node, _EnlistQueue([]))
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queue.waiting.append((item, done))
        if not queue.busy:
            queue.busy = True
            task = asyncio.ensure_future(self._send_enlists(queue))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await done

    async def _send_enlists(self, queue: _EnlistQueue) -> None:
        try:
            while queue.waiting:
                batch, queue.waiting = queue.waiting, []
                try:
                    result = await self._arun(self._enlist_op([item for item, _ in batch]))
                except Exception as exc:  # every waiter gets the store's error
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(result)
        finally:
            queue.busy = False

    def _drive(self, steps: Steps[T]) -> T:
        try:
            step: Any = next(steps)
            while True:
                if isinstance(step, _Batch):
                    step = steps.send(self._pipelined(step) if step.ops else [])
                elif isinstance(step, _Enlist):
                    step = steps.send(self._run(self._enlist_op([step])))
                else:
                    step = steps.send(self._run(step))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _adrive(self, steps: Steps[T]) -> T:
        try:
            step: Any = next(steps)
            while True:
                if isinstance(step, _Batch):
                    step = steps.send(await self._apipelined(step) if step.ops else [])
                elif isinstance(step, _Enlist):
                    step = steps.send(await self._aenlist(step))
                else:
                    step = steps.send(await self._arun(step))
        except StopIteration as done:
            result: T = done.value
            return result

    # Keys and small steps ---------------------------------------------------------------

    def _global_key(self) -> str:
        return f"{self.prefix}/{{~}}nodes"

    def _group_steps(self, changes: Iterable[tuple[str, str, str, str]]) -> Steps[_Flags]:
        """Count (op, cid, user, group) changes into or out of their groups.

        One call a group, all pipelined; returns (cid, group) -> c_group's flags.
        """
        by_group: dict[str, list[tuple[str, str, str]]] = {}
        for op, cid, user, group in changes:
            by_group.setdefault(group, []).append((op, cid, user))
        if not by_group:
            return _Flags()
        names = list(by_group)
        replies = yield _Batch(
            tuple(
                self._fcall(
                    "c_group",
                    self.group_key(g),
                    g,
                    *(x for item in by_group[g] for x in item),
                    parse=list,
                )
                for g in names
            )
        )
        flags = _Flags()
        for g, reply in zip(names, replies, strict=True):
            *answers, flags.versions[g] = reply
            for (_, cid, _), flag in zip(by_group[g], answers, strict=True):
                flags[(cid, g)] = flags.get((cid, g), 0) | int(flag)
        return flags

    def _global_op(self, triples: Sequence[tuple[str, str, str]]) -> _Op[list[int]]:
        return self._fcall(
            "c_global", self._global_key(), *(x for t in triples for x in t), parse=list
        )

    def _all_pending_keys(self) -> list[str]:
        return [f"{self.prefix}/{{~p{k:x}}}pending" for k in range(PENDING_SHARDS)]

    def _pending_key(self, user: str) -> str:
        """The shard of pending departures a user's go to (P/{~p<k>}pending)."""
        return f"{self.prefix}/{{~p{zlib.crc32(user.encode()) % PENDING_SHARDS:x}}}pending"

    def _shared_ops(
        self, triples: Sequence[tuple[str, str, str]]
    ) -> tuple[list[_Op[list[int]]], list[tuple[int, int]]]:
        """Calls for the registry and node list ({~}) and the leave grace (shards).

        Returns the calls and, for each triple, where its answer is (call, index).
        """
        registry = [i for i, t in enumerate(triples) if t[0] not in ("A", "B")]
        shards: dict[str, list[int]] = {}
        for i, t in enumerate(triples):
            if t[0] in ("A", "B"):
                shards.setdefault(self._pending_key(t[1]), []).append(i)
        ops: list[_Op[list[int]]] = []
        where: list[tuple[int, int]] = [(0, 0)] * len(triples)
        if registry:
            ops.append(self._global_op([triples[i] for i in registry]))
            for n, i in enumerate(registry):
                where[i] = (len(ops) - 1, n)
        for key, members in shards.items():
            if any(triples[i][0] == "A" for i in members):
                with self._lock:
                    self._marked.add(key)
            flat = (x for i in members for x in triples[i])
            ops.append(self._fcall("c_grace", key, *flat, parse=list))
            for n, i in enumerate(members):
                where[i] = (len(ops) - 1, n)
        return ops, where

    def _registry(self, flags: _Flags, op: str) -> list[tuple[str, str, str]]:
        """Registry changes for groups that became non-empty ('R+') or empty ('R-').

        Each carries the time its group's slot saw the change: the registry
        applies a change only if it is newer than the last it applied, so two
        processes' changes that cross on the way cannot leave a group out.
        """
        return [(op, g, str(flags.versions.get(g, ""))) for (_, g), f in flags.items() if f & 4]

    def _absent(
        self, user: str, groups: Iterable[str], offline: bool
    ) -> list[tuple[str, str, str]]:
        if self.grace <= 0 or not user:
            return []
        marks = [("A", user, g) for g in groups]
        if offline:
            marks.append(("A", user, ""))
        return marks

    def _prefix_steps(self, nodes: Iterable[str]) -> Steps[dict[str, str]]:
        """The channel prefix of each node, read from its hash when not known yet."""
        known = {**self._other_prefixes, **self._node_prefixes}
        wanted = sorted({n for n in nodes if n not in known})
        if wanted:
            found = yield _Batch(
                tuple(
                    _Op(("HGET", self._node_key(n), "c"), parse=lambda r: r or "") for n in wanted
                )
            )
            if len(self._other_prefixes) > PREFIX_CACHE:
                self._other_prefixes.clear()
            self._other_prefixes.update(zip(wanted, found, strict=True))
            known.update(zip(wanted, found, strict=True))
        return known

    def _finish_departures(
        self, deps: Sequence[list[Any]], flags: Mapping[tuple[str, str], int]
    ) -> Steps[tuple[Departure, ...]]:
        """Departures from c_unrecord's replies, with the groups their users left."""
        for dep in deps:
            dep[6] = [g for g in _split(dep[4]) if flags.get((dep[0], g), 0) & 2]
        prefixes = yield from self._prefix_steps(d[0].partition(".")[0] for d in deps)
        return _departures(deps, prefixes)

    def _delist_ops(self, cids: Iterable[str], why: str = "", code: Any = "") -> list[_Op[Any]]:
        by_node: dict[str, list[str]] = {}
        for cid in cids:
            node, _, seq = cid.partition(".")
            by_node.setdefault(node, []).append(seq)
        return [
            self._fcall(
                "c_delist",
                self._node_key(node),
                node,
                "",
                why,
                "" if code is None else code,
                *seqs,
                parse=int,
            )
            for node, seqs in by_node.items()
        ]

    def _drop_later(self, cid: str) -> None:
        node, _, seq = cid.partition(".")
        with self._lock:
            self._dropped.setdefault(node, []).append(seq)

    def _node_op(self, name: str, node: str, *args: Any, parse: Callable[[Any], T]) -> _Op[T]:
        """A call on ``node``'s slot carrying its own disconnects since its last one.

        They count as the node's writes once the call is answered, on both
        sides (a call that fails leaves them queued for the next).
        """
        with self._lock:
            dropped = list(self._dropped.get(node, ()))

        def parsed(raw: Any) -> T:
            if dropped:
                gone = set(dropped)
                with self._lock:
                    queue = self._dropped.get(node, [])
                    self._dropped[node] = [seq for seq in queue if seq not in gone]
                    if not self._dropped[node]:
                        del self._dropped[node]
                self._writes[node] = self._writes.get(node, 0) + len(dropped)
            return parse(raw)

        return self._fcall(name, self._node_key(node), *args, *dropped, parse=parsed)

    def _recorded_op(self, user: str, cid: str) -> _Op[bool]:
        return _Op(("HEXISTS", self._holder_key(user, cid), cid), parse=bool)

    def _undo_steps(self, cid: str, user: str, groups: Iterable[str]) -> Steps[None]:
        """Count out of ``groups`` a connection removed while it was being counted in.

        Its remover took it out of the record and then out of the groups it
        found; a count-in that landed after that is undone here, once the
        record is seen gone. Either way the connection ends up counted nowhere.
        """
        flags = yield from self._group_steps(("-", cid, user, g) for g in groups)
        if emptied := self._registry(flags, "R-"):
            yield self._global_op(emptied)

    # Writes --------------------------------------------------------------------------

    def _connect_steps(self, connection: Connection, policy: SessionPolicy) -> Steps[ConnectResult]:
        if not self.per_slot:
            return (yield from super()._connect_steps(connection, policy))
        cid = self._check_id(connection)
        node = connection.node
        user = _opt(connection.user)
        fresh = node not in self._live_nodes
        prefix = self._prefix_of(node, connection.channel_name)
        # The bucket first: a node that dies later is reaped with this connection.
        enlisted = yield _Enlist(node, cid, user, prefix, fresh)
        if enlisted != 1:
            return ConnectResult(accepted=False, refused="counted_out")
        # c_enlist counted it: so do we, whatever c_admit decides (a refusal's
        # c_delist is not counted), or a refused connect would hide a loss.
        self._writes[node] = self._writes.get(node, 0) + 1
        if fresh:
            # Listed before its first record: a node that dies is always reaped.
            yield self._global_op([("N", node, "")])
        groups = tuple(dict.fromkeys(connection.groups))
        at = "" if not connection.connected_at else str(round(connection.connected_at * 1000))
        reply = yield self._fcall(
            "c_admit",
            self._holder_key(user, cid),
            cid,
            user,
            _opt(connection.session),
            ",".join(groups),
            _meta(connection.meta),
            _limit(policy.max_sessions),
            policy.scope,
            policy.on_limit,
            at,
            _channel_part(connection.channel_name, prefix),
            "",
            _limit(policy.max_connections),
            policy.close_code,
            str(round(connection.opened_at * 1000)) if connection.opened_at else "",
            parse=json.loads,
        )
        status = reply[0]
        if status != 1:
            yield _Batch(tuple(self._delist_ops([cid])))
            refused = {0: "limit", -2: "connections", -3: "logged_out"}[status]
            return ConnectResult(accepted=False, refused=refused)
        self._live_nodes.add(node)
        _, first, evicted, t_ms, sessions, replaced = reply
        evicted = list(evicted or ())
        # Ours in before the evicted out: a group both share keeps the user.
        changes = [("+", cid, user, g) for g in groups]
        changes += [("-", cid, user, g) for g in _strings(replaced) if g not in groups]
        changes += [("-", d[0], user, g) for d in evicted for g in _split(d[4])]
        flags = yield from self._group_steps(changes)
        joined = [g for g in groups if flags.get((cid, g), 0) & 2]
        departures = list((yield from self._finish_departures(evicted, flags)))
        created = [g for g in groups if flags.get((cid, g), 0) & 4]
        emptied = [g for (c, g), f in flags.items() if f & 4 and not (c == cid and g in groups)]
        glob: list[tuple[str, str, str]] = []
        glob += [("R+", g, str(flags.versions[g])) for g in created]
        glob += [("R-", g, str(flags.versions[g])) for g in emptied]
        asks: list[str] = []
        if self.grace > 0 and user:
            # Back within the leave grace: no "online" or "joined" to announce.
            asks = [""] * bool(first) + joined
        start = len(glob)
        glob += [("B", user, g) for g in asks]
        for d in departures:
            glob += self._absent(user, d.user_left, False)
        ops: list[_Op[Any]] = []
        if groups:
            ops.append(self._recorded_op(user, cid))
        ops += self._delist_ops((d[0] for d in evicted), "superseded", policy.close_code)
        if ghosts := [f"{d[0]}|g" for d in evicted if d[4]]:
            # The evicted are counted out of their groups: their lists can go.
            ops.append(_Op(("HDEL", self._holder_key(user, cid), *ghosts), parse=int))
        shared, where = self._shared_ops(glob)
        offset = len(ops)
        replies = yield _Batch((*ops, *shared))
        if groups and not replies[0]:
            yield from self._undo_steps(cid, user, groups)
        back = {
            g
            for n, g in enumerate(asks)
            if int(replies[offset + where[start + n][0]][where[start + n][1]])
        }
        for session in sessions or ():
            more = yield from self._disconnect_user_steps(
                user, str(session), "superseded", policy.close_code
            )
            departures.extend(more)
        return ConnectResult(
            accepted=True,
            evicted=tuple(departures),
            came_online=bool(first) and "" not in back,
            user_joined=tuple(g for g in joined if g not in back),
            connected_at=int(t_ms) / 1000,
        )

    def _disconnect_steps(self, connection: Connection) -> Steps[Departure | None]:
        if not self.per_slot:
            return (yield from super()._disconnect_steps(connection))
        cid = self._check_id(connection)
        user = _opt(connection.user)
        holder = self._holder_key(user, cid)
        # Out of the groups first, then the record: a caller that dies between
        # the two leaves a record the reaper still finds, with its groups.
        # The caller's copy names the groups (the tracker's is current); one
        # it missed is counted out after the record goes, a group it names
        # wrongly is left alone (the connection is not counted there).
        known = tuple(dict.fromkeys(connection.groups))
        flags = yield from self._group_steps(("-", cid, user, g) for g in known)
        [dep] = yield self._fcall("c_unrecord", holder, user, cid, parse=json.loads)
        # Its bucket entry goes with the node's next call: one call fewer here.
        self._drop_later(cid)
        if not dep:
            # Removed meanwhile by another process (an eviction, a kick), whose
            # own group steps then found these groups done: the registry and
            # the leave grace hear of what this call counted out from it.
            left = [g for g in known if flags.get((cid, g), 0) & 2]
            glob = self._registry(flags, "R-") + self._absent(user, left, False)
            if glob:
                yield _Batch(tuple(self._shared_ops(glob)[0]))
            return None
        if late := [g for g in _split(dep[4]) if g not in known]:
            flags.update((yield from self._group_steps(("-", cid, user, g) for g in late)))
        [departure] = yield from self._finish_departures([dep], flags)
        glob = self._registry(flags, "R-") + self._absent(
            user, departure.user_left, departure.went_offline
        )
        if glob:
            yield _Batch(tuple(self._shared_ops(glob)[0]))
        return departure

    def _set_meta_op(self, connection: Connection, meta: dict[str, Any] | None) -> _Op[bool]:
        if not self.per_slot:
            return super()._set_meta_op(connection, meta)
        cid = self._check_id(connection)
        user = _opt(connection.user)
        return self._fcall(
            "c_meta", self._holder_key(user, cid), cid, user, _meta(meta), parse=bool
        )

    def _membership_steps(
        self, name: str, connection: Connection, groups: tuple[str, ...]
    ) -> Steps[tuple[str, ...]]:
        if not self.per_slot:
            return (yield from super()._membership_steps(name, connection, groups))
        cid = self._check_id(connection)
        user = _opt(connection.user)
        holder = self._holder_key(user, cid)
        unique = tuple(dict.fromkeys(groups))
        changed: list[str] = []
        for start in range(0, len(unique), GROUPS_BATCH):
            part = unique[start : start + GROUPS_BATCH]
            edit = self._fcall(
                "c_edit",
                holder,
                cid,
                user,
                "+" if name == "join" else "-",
                _group_list(part),
                parse=json.loads,
            )
            if name == "join":
                # The record first: a group never counts a connection that is not recorded.
                added = yield edit
                if added is False:
                    return ()
                flags = yield from self._group_steps(("+", cid, user, g) for g in _strings(added))
                firsts = [g for g in _strings(added) if flags.get((cid, g), 0) & 2]
                glob = self._registry(flags, "R+")
                asks = firsts if self.grace > 0 and user else []
                start = len(glob)
                glob += [("B", user, g) for g in asks]
                shared, where = self._shared_ops(glob)
                replies = yield _Batch((self._recorded_op(user, cid), *shared))
                if not replies[0]:
                    yield from self._undo_steps(cid, user, _strings(added))
                    return tuple(changed)
                back = {
                    g
                    for n, g in enumerate(asks)
                    if int(replies[1 + where[start + n][0]][where[start + n][1]])
                }
                changed += [g for g in firsts if g not in back]
            else:
                # The groups first: a record never lists a group that lost count of it.
                flags = yield from self._group_steps(("-", cid, user, g) for g in part)
                dropped = yield edit
                if dropped is False and not flags:
                    return ()
                left = [g for g in part if flags.get((cid, g), 0) & 2]
                glob = self._registry(flags, "R-") + self._absent(user, left, False)
                if glob:
                    yield _Batch(tuple(self._shared_ops(glob)[0]))
                changed += left
        return tuple(changed)

    def _disconnect_user_steps(
        self, user: str, session: str | None, reason: str, code: int | None
    ) -> Steps[tuple[Departure, ...]]:
        if not self.per_slot:
            return (yield from super()._disconnect_user_steps(user, session, reason, code))
        found: list[Departure] = []
        key = self._user_key(user)
        cursor = "0"
        while True:
            cursor, flat = yield _Op(("HSCAN", key, cursor, "COUNT", USER_BATCH), parse=tuple)
            cids = [f for f in flat if "." in f and "|" not in f]
            if cids:
                found.extend((yield from self._kick_steps(user, session, cids, reason, code)))
            if str(cursor) == "0":
                return tuple(sorted(found, key=lambda d: d.connection.connected_at))

    def _kick_steps(
        self, user: str, session: str | None, cids: list[str], reason: str, code: int | None
    ) -> Steps[tuple[Departure, ...]]:
        """Remove some of a user's connections: out of their groups first, then the records.

        As for a disconnect, a caller that dies half-way leaves records that
        still list their groups, for the reaper (or the next kick) to finish.
        """
        key = self._user_key(user)
        # Read whole: an HSCAN page may hold a record without its groups field.
        values = yield _Op(("HMGET", key, *(f for c in cids for f in (c, f"{c}|g"))), parse=list)
        chosen: dict[str, list[str]] = {}
        for cid, rec, groups in zip(cids, values[0::2], values[1::2], strict=True):
            if rec and (session is None or _session_of(rec) == session):
                chosen[cid] = _split(groups)
        if not chosen:
            return ()
        flags = yield from self._group_steps(
            ("-", cid, user, g) for cid, gs in chosen.items() for g in gs
        )
        deps = yield self._fcall("c_unrecord", key, user, *chosen, parse=json.loads)
        deps = [d for d in deps if d]
        # Groups joined between the read and the removal.
        late = [("-", d[0], user, g) for d in deps for g in _split(d[4]) if g not in chosen[d[0]]]
        if late:
            flags.update((yield from self._group_steps(late)))
        departures = yield from self._finish_departures(deps, flags)
        glob = self._registry(flags, "R-")
        for d in deps:
            glob += self._absent(user, d[6], bool(d[7]))
        ops = self._delist_ops((d[0] for d in deps), reason, code)
        yield _Batch((*ops, *self._shared_ops(glob)[0]))
        return departures

    def _restore_steps(
        self, connections: tuple[Connection, ...], policy: SessionPolicy, function: str = "restore"
    ) -> Steps[RestoreResult]:
        if not self.per_slot:
            return (yield from super()._restore_steps(connections, policy, function))
        # Written back one by one; a connection that would take its user past
        # a limit is refused (on a cluster, newer ones never evict here).
        strict = replace(policy, on_limit="reject_new")
        restored = 0
        refused: list[str] = []
        logged_out: list[str] = []
        for c in connections:
            result = yield from self._connect_steps(c, strict)
            if result.accepted:
                restored += 1
            else:
                (logged_out if result.refused == "logged_out" else refused).append(c.conn_id)
        return RestoreResult(
            restored=restored, refused=tuple(refused), logged_out=tuple(logged_out)
        )

    def _retire_steps(self, node: str) -> Steps[bool]:
        if not self.per_slot:
            return (yield from super()._retire_steps(node))
        while (done := (yield self._node_op("c_retire", node, node, parse=int))) == RETIRE_AGAIN:
            pass
        if done:
            yield self._global_op([("X", node, "")])
            self._forget_node(node)
        return bool(done)

    # Liveness ----------------------------------------------------------------------------

    def _empty_node_steps(
        self, node: str, budget: int, reaping: bool
    ) -> Steps[tuple[list[Departure], int, bool]]:
        """Remove a node's connections, a bucket's worth a step, up to ``budget``.

        Each step is safe to replay: a reaper that dies after any of them leaves
        the connections it had not finished in the bucket for the next one.
        Returns departures (none when the node resets itself), work done, and
        whether the node has none left.
        """
        out: list[Departure] = []
        work = 0
        while work < budget:
            flat, done = yield self._fcall(
                "c_reap_take",
                self._node_key(node),
                node,
                min(REAP_BATCH, budget - work),
                "1" if reaping else "",
                parse=json.loads,
            )
            if done:
                if reaping:
                    yield self._global_op([("X", node, "")])
                return out, work, True
            if not flat:
                # The step only looked through empty buckets: work all the same.
                work += REAP_BATCH
                continue
            pairs = [
                (f"{node}.{flat[i]}", _opt(flat[i + 1] or None)) for i in range(0, len(flat), 2)
            ]
            # Each record's groups, read before anything is removed.
            groups = yield _Batch(
                tuple(
                    _Op(("HGET", self._holder_key(user, cid), f"{cid}|g"), parse=_split)
                    for cid, user in pairs
                )
            )
            flags = yield from self._group_steps(
                ("-", cid, user, g)
                for (cid, user), gs in zip(pairs, groups, strict=True)
                for g in gs
            )
            by_holder: dict[tuple[str, str], list[str]] = {}
            for cid, user in pairs:
                by_holder.setdefault((self._holder_key(user, cid), user), []).append(cid)
            replies = yield _Batch(
                tuple(
                    self._fcall("c_unrecord", key, user, *cids, parse=json.loads)
                    for (key, user), cids in by_holder.items()
                )
            )
            deps = [d for reply in replies for d in reply if d]
            departures = yield from self._finish_departures(deps, flags)
            glob = self._registry(flags, "R-")
            if reaping:
                out.extend(departures)
                for d in deps:
                    glob += self._absent(_opt(d[1] or None), d[6], bool(d[7]))
            ops = self._delist_ops(cid for cid, _ in pairs)
            yield _Batch((*ops, *self._shared_ops(glob)[0]))
            work += len(pairs) + sum(len(gs) for gs in groups)
        return out, work, False

    def _reap_steps(self, budget: int, dead: str | None) -> Steps[tuple[list[Departure], bool]]:
        """Reap dead nodes, ``dead`` first, until ``budget``; returns departures, more."""
        found: list[Departure] = []
        work = 0
        while work < budget:
            if dead is None:
                _, dead = yield self._tick_op("")
                if not dead:
                    return found, False
            deps, done_work, _ = yield from self._empty_node_steps(str(dead), budget - work, True)
            found.extend(deps)
            work += max(1, done_work)
            dead = None
        return found, True

    def _tick_op(self, node: str) -> _Op[Any]:
        return self._fcall("c_tick", self._global_key(), node, parse=json.loads)

    def _claim_steps(self, keys: Iterable[str], batch: int) -> Steps[tuple[list[str], set[str]]]:
        """Claim due departures from pending shards; returns them and the shards with more."""
        keys = sorted(set(keys))
        if not keys:
            return [], set()
        replies = yield _Batch(
            tuple(self._fcall("c_claim", key, batch, parse=json.loads) for key in keys)
        )
        items = [str(i) for due, _ in replies for i in due or ()]
        return items, {key for key, (_, more) in zip(keys, replies, strict=True) if more}

    def _claimed_steps(self, items: Sequence[str]) -> Steps[tuple[Absence, ...]]:
        """Departures claimed after the grace: those whose user is still away."""
        ops = []
        pairs = []
        for item in items:
            parts = str(item).split("\t")
            if parts[0] == "u":
                ops.append(_Op(("EXISTS", self._user_key(parts[1])), parse=int))
                pairs.append([parts[1], None])
            else:
                ops.append(_Op(("HEXISTS", self.group_key(parts[1]), parts[2]), parse=int))
                pairs.append([parts[2], parts[1]])
        if not ops:
            return ()
        present = yield _Batch(tuple(ops))
        return _absences([p for p, here in zip(pairs, present, strict=True) if not here])

    def _refresh_steps(self, node: str, audit: tuple[Connection, ...] = ()) -> Steps[RefreshResult]:
        # Per slot, a beat audits nothing: the audit of partial loss (issue 11)
        # reads several slots at once and runs on one Redis only.
        if not self.per_slot:
            return (yield from super()._refresh_steps(node, audit))
        beat = yield self._node_op(
            "c_beat",
            node,
            node,
            self._prefix_of(node),
            INBOX_BATCH,
            self._writes.get(node, 0),
            self._inbox_acks.get(node, ""),
            parse=json.loads,
        )
        if beat[0] == 2:
            self._inbox_acks.pop(node, None)
            return RefreshResult(counted_out=True)
        state, closed, more_inbox = beat
        # Only once the node's own hash says it was not counted out.
        next_check, dead = yield self._tick_op(node)
        # Every shard: departures of processes that died before claiming theirs.
        due, fuller = yield from self._claim_steps(
            self._all_pending_keys(), -(-SETTLE_BATCH // PENDING_SHARDS)
        )
        more_due = bool(fuller)
        settled = yield from self._claimed_steps(due)
        expired: list[Departure] = []
        reaping = False
        if dead:
            expired, reaping = yield from self._reap_steps(self.reap_budget, str(dead))
        # Acknowledged only now: a later step that failed leaves them to the next beat.
        self._ack_inbox(node, closed)
        reasons, codes = _close_notices(node, closed)
        return RefreshResult(
            closed=tuple(reasons),
            close_reasons=reasons,
            close_codes=codes,
            expired=tuple(expired),
            settled=settled,
            lost=state == 1,
            more=bool(more_inbox or more_due or reaping),
            next_check=None if next_check < 0 else float(next_check),
        )

    def _reset_steps(self, node: str) -> Steps[None]:
        if not self.per_slot:
            return (yield from super()._reset_steps(node))
        done = False
        while not done:
            _, _, done = yield from self._empty_node_steps(node, self.reap_budget, False)

    def _sweep_steps(self) -> Steps[tuple[Departure, ...]]:
        if not self.per_slot:
            return (yield from super()._sweep_steps())
        found: list[Departure] = []
        while True:
            deps, more = yield from self._reap_steps(self.reap_budget, None)
            found.extend(deps)
            if not more:
                return tuple(found)

    def _settle_steps(self) -> Steps[tuple[Absence, ...]]:
        if not self.per_slot:
            return (yield from super()._settle_steps())
        # The shards this process wrote departures to since it last claimed.
        with self._lock:
            marked, self._marked = self._marked, set()
        due, fuller = yield from self._claim_steps(marked, SETTLE_BATCH)
        if fuller:
            with self._lock:
                self._marked |= fuller
        return (yield from self._claimed_steps(due))

    # Reads --------------------------------------------------------------------------------

    def _live_records_steps(self, items: list[list[Any]]) -> Steps[list[Connection]]:
        """Connections of records whose node still beats."""
        nodes = sorted({str(i[0]).partition(".")[0] for i in items})
        if not nodes:
            return []
        beating = yield self._fcall_ro("c_alive", self._global_key(), *nodes, parse=list)
        live = {n for n, a in zip(nodes, beating, strict=True) if int(a)}
        prefixes = yield from self._prefix_steps(live)
        return [_connection(i, prefixes) for i in items if str(i[0]).partition(".")[0] in live]

    def _user_connections_steps(self, user: str) -> Steps[tuple[Connection, ...]]:
        if not self.per_slot:
            return (yield from super()._user_connections_steps(user))
        flat = yield _Op(("HGETALL", self._user_key(user)), parse=lambda r: dict(r or {}))
        return _by_time((yield from self._live_records_steps(_records(user, flat))))

    def _group_connections_steps(self, group: str) -> Steps[tuple[Connection, ...]]:
        if not self.per_slot:
            return (yield from super()._group_connections_steps(group))
        found: dict[str, Connection] = {}
        users_cursor, anon_cursor = "0", "0"
        while users_cursor or anon_cursor:
            pages = []
            if users_cursor:
                pages.append(
                    _Op(
                        ("HSCAN", self.group_key(group), users_cursor, "COUNT", MEMBERS_BATCH), list
                    )
                )
            if anon_cursor:
                pages.append(
                    _Op(
                        (
                            "SSCAN",
                            f"{self.group_key(group)}/a",
                            anon_cursor,
                            "COUNT",
                            MEMBERS_BATCH,
                        ),
                        list,
                    )
                )
            replies = yield _Batch(tuple(pages))
            users: list[str] = []
            anonymous: list[str] = []
            if users_cursor:
                users_cursor, flat = replies.pop(0)
                users = list(flat[0::2] if isinstance(flat, list) else flat)
                users_cursor = "" if str(users_cursor) == "0" else str(users_cursor)
            if anon_cursor:
                anon_cursor, anonymous = replies.pop(0)
                anon_cursor = "" if str(anon_cursor) == "0" else str(anon_cursor)
            reads: list[_Op[Any]] = [
                _Op(("HGETALL", self._user_key(u)), parse=lambda r: dict(r or {})) for u in users
            ]
            reads += [
                _Op(
                    ("HMGET", self._holder_key("", cid), cid, f"{cid}|g", f"{cid}|m"),
                    parse=lambda r: r,
                )
                for cid in anonymous
            ]
            results = yield _Batch(tuple(reads))
            items: list[list[Any]] = []
            for u, flat in zip(users, results[: len(users)], strict=True):
                items += [i for i in _records(u, flat) if group in _split(i[4])]
            for cid, rec in zip(anonymous, results[len(users) :], strict=True):
                if rec[0]:
                    items += _records(None, {cid: rec[0], f"{cid}|g": rec[1], f"{cid}|m": rec[2]})
            for conn in (yield from self._live_records_steps(items)):
                found[conn.conn_id] = conn
        return _by_time(list(found.values()))

    def _groups_steps(self) -> Steps[dict[str, int]]:
        if not self.per_slot:
            return (yield from super()._groups_steps())
        found: dict[str, int] = {}
        after = ""
        while True:
            low = "-" if not after else f"({after}"
            page = yield _Op(
                ("ZRANGE", f"{self.prefix}/{{~}}groups", low, "+", "BYLEX", "LIMIT", 0, READ_BATCH),
                parse=list,
            )
            sizes = yield from self._sizes_steps(tuple(page))
            found.update((g, n) for g, n in sizes.items() if n > 0)
            if len(page) < READ_BATCH:
                return dict(sorted(found.items()))
            after = str(page[-1])

    def _sizes_steps(self, groups: tuple[str, ...]) -> Steps[dict[str, int]]:
        if not self.per_slot:
            return (yield from super()._sizes_steps(groups))
        if not groups:
            return {}
        counts = yield _Batch(
            tuple(
                _Op(("GET", self.group_count_key(g)), parse=lambda r: int(r or 0)) for g in groups
            )
        )
        return dict(zip(groups, counts, strict=True))
