"""The embedded default store, on Django's cache API.

Correct within one process: every operation runs under one process-wide lock,
reads the few cache keys it needs and writes them back together. Population
counts have keys of their own, so a read is one small ``get``.

The state uses a handful of keys, plus three per group:

``P:conns``        channel -> record (user, session, connected_at, groups, meta, conn id)
``P:users``        user -> {channel: connected_at}
``P:groups``       group -> live connections (the registry behind ``groups()``)
``P:nodes``        node -> deadline: a node's connections live while it beats
``P:dead``         node -> until when a node counted out must not come back
``P:inbox``        node -> its connections removed by others, for its heartbeat
``P:g:<group>``    channel -> user (``None`` for anonymous)
``P:gu:<group>``   user -> connections of that user in the group
``P:gn:<group>``   [connections, users]

Liveness is per node, as in the Redis store: a heartbeat moves its node's
deadline, and the connections of a node past its deadline (a process sharing
a non-Redis cache died) are removed by the next heartbeat of another.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

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

T = TypeVar("T")

_SAFE_PART = re.compile(r"[A-Za-z0-9_.!\-]{1,120}")
# One lock for every LocalStore in the process: two stores on one cache alias
# (after a settings change in tests) must not interleave their writes.
_LOCK = threading.RLock()
SWEEP_BATCH = 500


def _part(value: str) -> str:
    # Cache keys must stay short and free of spaces for every cache backend.
    if _SAFE_PART.fullmatch(value):
        return value
    return "h" + hashlib.sha1(value.encode()).hexdigest()


class _State:
    """The keys one operation read, and which of them it changed."""

    def __init__(self, store: LocalStore, keys: Iterable[str]) -> None:
        self.store = store
        self.fetched = set(keys)
        self.values: dict[str, Any] = store.cache.get_many(list(self.fetched))
        self.dirty: set[str] = set()

    def get(self, key: str, default: Callable[[], T]) -> T:
        if key not in self.values:
            found = None if key in self.fetched else self.store.cache.get(key)
            self.values[key] = default() if found is None else found
        value: T = self.values[key]
        return value

    def mark(self, key: str) -> None:
        self.dirty.add(key)

    def save(self) -> None:
        to_set: dict[str, Any] = {}
        to_delete: list[str] = []
        for key in self.dirty:
            value = self.values[key]
            if value in ({}, [0, 0]):
                to_delete.append(key)
            else:
                to_set[key] = value
        if to_set:
            self.store.cache.set_many(to_set, timeout=None)
        if to_delete:
            self.store.cache.delete_many(to_delete)


class LocalStore:
    """Presence in a Django cache, correct within one process."""

    def __init__(
        self,
        cache_alias: str = "default",
        *,
        prefix: str = "presence",
        ttl: float = 60,
        grace: float = 0,
    ):
        self.cache_alias = cache_alias
        cache = caches[cache_alias]
        #: Where the state lives: the cache itself, or for a local-memory cache
        #: (private to the process anyway) plain dicts in process memory.
        self.cache: Any = _memory(cache_alias) if _is_local_memory(cache) else cache
        self.prefix = prefix
        self.ttl = float(ttl)
        self.grace = float(grace)
        #: Nodes this store recorded a connection of (a first connect marks a node live).
        self._known_nodes: set[str] = set()

    def __repr__(self) -> str:
        return f"LocalStore(cache={self.cache_alias!r}, prefix={self.prefix!r})"

    # Keys -------------------------------------------------------------------

    @property
    def _conns(self) -> str:
        return f"{self.prefix}:conns"

    @property
    def _users(self) -> str:
        return f"{self.prefix}:users"

    @property
    def _registry(self) -> str:
        return f"{self.prefix}:groups"

    @property
    def _nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def _live(self) -> str:
        return f"{self.prefix}:live"

    @property
    def _dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def _inbox(self) -> str:
        return f"{self.prefix}:inbox"

    @property
    def _fences(self) -> str:
        return f"{self.prefix}:fences"

    @property
    def _pending(self) -> str:
        return f"{self.prefix}:pending"

    def _g(self, group: str) -> str:
        return f"{self.prefix}:g:{_part(group)}"

    def _gu(self, group: str) -> str:
        return f"{self.prefix}:gu:{_part(group)}"

    def _gn(self, group: str) -> str:
        return f"{self.prefix}:gn:{_part(group)}"

    def _base_keys(self) -> list[str]:
        return [
            self._conns,
            self._users,
            self._registry,
            self._pending,
            self._nodes,
            self._dead,
            self._live,
            self._inbox,
        ]

    def _group_keys(self, groups: Iterable[str]) -> list[str]:
        return [k for g in groups for k in (self._g(g), self._gu(g), self._gn(g))]

    # Building blocks (called under the lock) ------------------------------------

    def _alive(self, state: _State, rec: dict[str, Any], now: float) -> bool:
        nodes: dict[str, float] = state.get(self._nodes, dict)
        return nodes.get(_node(rec["n"]), 0.0) > now

    def _user_channels(self, state: _State, user: str) -> list[str]:
        """The user's recorded channels, oldest first."""
        users: dict[str, dict[str, float]] = state.get(self._users, dict)
        mine = users.get(user, {})
        return sorted(mine, key=lambda ch: (mine[ch], ch))

    def _add_to_group(self, state: _State, channel: str, user: str | None, group: str) -> bool:
        """Add one membership; return True if the user is new in the group."""
        members: dict[str, str | None] = state.get(self._g(group), dict)
        if channel in members:
            return False
        members[channel] = user
        per_user: dict[str, int] = state.get(self._gu(group), dict)
        counts: list[int] = state.get(self._gn(group), lambda: [0, 0])
        registry: dict[str, int] = state.get(self._registry, dict)
        joined = False
        if user is not None:
            joined = per_user.get(user, 0) == 0
            per_user[user] = per_user.get(user, 0) + 1
        counts[:] = [len(members), len(per_user)]
        registry[group] = len(members)
        for key in (self._g(group), self._gu(group), self._gn(group), self._registry):
            state.mark(key)
        return joined

    def _remove_from_group(self, state: _State, channel: str, user: str | None, group: str) -> bool:
        """Remove one membership; return True if it was the user's last in the group."""
        members: dict[str, str | None] = state.get(self._g(group), dict)
        if channel not in members:
            return False
        del members[channel]
        per_user: dict[str, int] = state.get(self._gu(group), dict)
        counts: list[int] = state.get(self._gn(group), lambda: [0, 0])
        registry: dict[str, int] = state.get(self._registry, dict)
        left = False
        if user is not None and user in per_user:
            per_user[user] -= 1
            if per_user[user] <= 0:
                del per_user[user]
                left = True
        counts[:] = [len(members), len(per_user)]
        if members:
            registry[group] = len(members)
        else:
            registry.pop(group, None)
        for key in (self._g(group), self._gu(group), self._gn(group), self._registry):
            state.mark(key)
        return left

    def _mark_absent(self, state: _State, user: str, group: str | None, now: float) -> None:
        """Start the leave grace of a user's departure (from a group, or altogether)."""
        if self.grace > 0:
            pending: dict[tuple[str, str], float] = state.get(self._pending, dict)
            pending[(group or "", user)] = now + self.grace
            state.mark(self._pending)

    def _back_in_time(self, state: _State, user: str, group: str | None) -> bool:
        """Cancel a pending departure; True if there was one (the user is back)."""
        pending: dict[tuple[str, str], float] = state.get(self._pending, dict)
        if pending.pop((group or "", user), None) is None:
            return False
        state.mark(self._pending)
        return True

    def _settle(self, state: _State, now: float) -> tuple[Absence, ...]:
        pending: dict[tuple[str, str], float] = state.get(self._pending, dict)
        due = [item for item, at in pending.items() if at <= now]
        for item in due:
            del pending[item]
        if due:
            state.mark(self._pending)
        users: dict[str, dict[str, float]] = state.get(self._users, dict)
        out = []
        for group, user in sorted(due):
            back = user in state.get(self._gu(group), dict) if group else bool(users.get(user))
            if not back:
                out.append(Absence(user, group or None))
        return tuple(out)

    def _register(self, state: _State, node: str, now: float, live: bool = False) -> None:
        """Give ``node`` a deadline if it has none; ``live`` marks it as beating.

        A node with a deadline but no mark was rebuilt by connects after the
        store lost it: its heartbeat writes its connections back.
        """
        nodes: dict[str, float] = state.get(self._nodes, dict)
        if node not in nodes:
            nodes[node] = now + self.ttl
            state.mark(self._nodes)
        if live:
            beating: dict[str, bool] = state.get(self._live, dict)
            beating[node] = True
            state.mark(self._live)

    def _record(self, state: _State, conn: Connection) -> tuple[str, ...]:
        """Write a connection and its groups; return groups the user newly joined."""
        conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
        conns[conn.channel_name] = {
            "u": conn.user,
            "s": conn.session,
            "t": conn.connected_at,
            "g": list(conn.groups),
            "m": conn.meta,
            "n": conn.conn_id,
        }
        state.mark(self._conns)
        if conn.user is not None:
            users: dict[str, dict[str, float]] = state.get(self._users, dict)
            users.setdefault(conn.user, {})[conn.channel_name] = conn.connected_at
            state.mark(self._users)
        return tuple(
            g for g in conn.groups if self._add_to_group(state, conn.channel_name, conn.user, g)
        )

    def _remove(
        self,
        state: _State,
        channel: str,
        now: float,
        why: str | None = None,
        code: int | None = None,
    ) -> Departure | None:
        conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
        rec = conns.pop(channel, None)
        if rec is None:
            return None
        state.mark(self._conns)
        user: str | None = rec["u"]
        left = tuple(g for g in rec["g"] if self._remove_from_group(state, channel, user, g))
        offline = False
        if user is not None:
            users: dict[str, dict[str, float]] = state.get(self._users, dict)
            mine = users.get(user, {})
            mine.pop(channel, None)
            if not mine:
                users.pop(user, None)
            state.mark(self._users)
            offline = not mine
            for group in left:
                self._mark_absent(state, user, group, now)
            if offline:
                self._mark_absent(state, user, None, now)
        if why is not None:
            # Its node's heartbeat closes it, should the caller's message be lost.
            inbox: dict[str, list[tuple[str, str, int | None]]] = state.get(self._inbox, dict)
            inbox.setdefault(_node(rec["n"]), []).append((rec["n"], why, code))
            state.mark(self._inbox)
        return Departure(_to_connection(channel, rec), user_left=left, went_offline=offline)

    def _reap(self, state: _State, now: float, budget: int) -> tuple[tuple[Departure, ...], bool]:
        """Remove the connections of nodes whose deadline passed, up to ``budget``."""
        nodes: dict[str, float] = state.get(self._nodes, dict)
        dead_nodes = {n for n, at in nodes.items() if at <= now}
        if not dead_nodes:
            return (), False
        conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
        due = [ch for ch, rec in conns.items() if _node(rec["n"]) in dead_nodes]
        departures = self._remove_all(state, due[:budget], now)
        if len(due) <= budget:
            dead: dict[str, float] = state.get(self._dead, dict)
            beating: dict[str, bool] = state.get(self._live, dict)
            for node in dead_nodes:
                del nodes[node]
                beating.pop(node, None)
                dead[node] = now + 10 * self.ttl
            state.mark(self._live)
            state.mark(self._nodes)
            state.mark(self._dead)
        return departures, len(due) > budget

    def _fenced(self, state: _State, conn: Connection, now: float) -> bool:
        fences: dict[str, dict[str, float]] = state.get(self._fences, dict)
        mine = {k: v for k, v in fences.get(str(conn.user), {}).items() if v > now}
        if conn.session is not None and f"s:{conn.session}" in mine:
            return True
        until = mine.get("*")
        # "*" holds until when it refuses: the logout came FENCE_SECONDS before.
        return (
            until is not None and bool(conn.opened_at) and conn.opened_at <= until - FENCE_SECONDS
        )

    def fence(self, user: str, session: str | None = None) -> None:
        def op() -> None:
            now = time.time()
            state = _State(self, [self._fences])
            fences: dict[str, dict[str, float]] = state.get(self._fences, dict)
            mine = {k: v for k, v in fences.get(user, {}).items() if v > now}
            mine[f"s:{session}" if session is not None else "*"] = now + FENCE_SECONDS
            fences[user] = mine
            state.mark(self._fences)
            state.save()

        self._run(op)

    async def afence(self, user: str, session: str | None = None) -> None:
        await self._async(self.fence, user, session)

    def _run(self, fn: Callable[[], T]) -> T:
        with _LOCK:
            return fn()

    # Writes -----------------------------------------------------------------

    def connect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        def op() -> ConnectResult:
            now = time.time()
            conn = connection
            if not conn.connected_at:
                conn = replace(conn, connected_at=now)
            state = _State(self, self._base_keys() + self._group_keys(conn.groups))
            dead: dict[str, float] = state.get(self._dead, dict)
            if dead.get(conn.node, 0.0) > now:
                return ConnectResult(accepted=False, refused="counted_out")
            if conn.user is not None and self._fenced(state, conn, now):
                return ConnectResult(accepted=False, refused="logged_out")
            evict: list[str] = []
            came_online = True
            if conn.user is not None:
                mine = [
                    ch for ch in self._user_channels(state, conn.user) if ch != conn.channel_name
                ]
                came_online = not mine
                evict = self._over_limit(state, conn, mine, policy)
                if evict and policy.on_limit == "reject_new":
                    return ConnectResult(accepted=False, refused="limit")
                limit = policy.max_connections
                if limit is not None and len(mine) - len(evict) >= limit:
                    return ConnectResult(accepted=False, refused="connections")
            if conn.channel_name in state.get(self._conns, dict):
                self._remove(state, conn.channel_name, now)
            fresh = conn.node not in self._known_nodes
            self._known_nodes.add(conn.node)
            self._register(state, conn.node, now, live=fresh)
            joined = self._record(state, conn)
            evicted = [
                self._remove(state, ch, now, "superseded", policy.close_code) for ch in evict
            ]
            if conn.user is not None:
                # Back within the grace: the departure is cancelled, not announced.
                if came_online and self._back_in_time(state, conn.user, None):
                    came_online = False
                joined = tuple(g for g in joined if not self._back_in_time(state, conn.user, g))
            state.save()
            return ConnectResult(
                accepted=True,
                evicted=tuple(d for d in evicted if d is not None),
                came_online=came_online and conn.user is not None,
                user_joined=joined,
                connected_at=conn.connected_at,
            )

        return self._run(op)

    def _over_limit(
        self, state: _State, conn: Connection, mine: list[str], policy: SessionPolicy
    ) -> list[str]:
        """Channels to remove so that ``conn`` fits the policy, oldest session first."""
        if policy.max_sessions is None:
            return []
        conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
        sessions: dict[str, list[str]] = {}
        for ch in mine:
            rec = conns[ch]
            sid = ch if policy.scope == "user" else (rec["s"] or f"channel:{ch}")
            sessions.setdefault(sid, []).append(ch)
        new_sid = conn.channel_name if policy.scope == "user" else conn.session_id
        if new_sid in sessions:
            return []
        # ``mine`` is oldest first, so dict order is the order sessions began.
        excess = len(sessions) + 1 - policy.max_sessions
        if excess <= 0:
            return []
        return [ch for sid in list(sessions)[:excess] for ch in sessions[sid]]

    def disconnect(self, connection: Connection) -> Departure | None:
        def op() -> Departure | None:
            now = time.time()
            state = _State(self, self._base_keys() + self._group_keys(connection.groups))
            departure = self._remove(state, connection.channel_name, now)
            if departure is None:
                departure = self._remove_lost(state, connection, now)
            state.save()
            return departure

        return self._run(op)

    def _remove_lost(self, state: _State, conn: Connection, now: float) -> Departure | None:
        """Count out of its groups a connection whose record was lost (a key
        evicted from a shared cache) though it was never removed."""
        channel, user = conn.channel_name, conn.user
        found = [g for g in conn.groups if channel in state.get(self._g(g), dict)]
        left = tuple(g for g in found if self._remove_from_group(state, channel, user, g))
        users: dict[str, dict[str, float]] = state.get(self._users, dict)
        mine = users.get(user, {}) if user is not None else {}
        listed = mine.pop(channel, None) is not None
        if not (found or listed):
            return None
        offline = False
        if user is not None:
            if not mine:
                users.pop(user, None)
            state.mark(self._users)
            offline = not mine
            for group in left:
                self._mark_absent(state, user, group, now)
            if offline:
                self._mark_absent(state, user, None, now)
        return Departure(conn, user_left=left, went_offline=offline)

    def join(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        channel_name = connection.channel_name

        def op() -> tuple[str, ...]:
            state = _State(self, self._base_keys() + self._group_keys(groups))
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            rec = conns.get(channel_name)
            if rec is None:
                return ()
            joined = []
            for g in groups:
                if g not in rec["g"]:
                    rec["g"].append(g)
                    new = self._add_to_group(state, channel_name, rec["u"], g)
                    if new and not self._back_in_time(state, rec["u"], g):
                        joined.append(g)
            state.mark(self._conns)
            state.save()
            return tuple(joined)

        return self._run(op)

    def leave(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        channel_name = connection.channel_name

        def op() -> tuple[str, ...]:
            state = _State(self, self._base_keys() + self._group_keys(groups))
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            rec = conns.get(channel_name)
            if rec is None:
                return ()
            left = []
            now = time.time()
            for g in groups:
                if g in rec["g"]:
                    rec["g"].remove(g)
                    if self._remove_from_group(state, channel_name, rec["u"], g):
                        left.append(g)
                        self._mark_absent(state, rec["u"], g, now)
            state.mark(self._conns)
            state.save()
            return tuple(left)

        return self._run(op)

    def set_meta(self, connection: Connection, meta: dict[str, Any] | None) -> bool:
        def op() -> bool:
            state = _State(self, [self._conns])
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            if connection.channel_name not in conns:
                return False
            conns[connection.channel_name]["m"] = meta
            state.mark(self._conns)
            state.save()
            return True

        return self._run(op)

    def refresh(self, node: str, audit: tuple[Connection, ...] = ()) -> RefreshResult:
        def op() -> RefreshResult:
            now = time.time()
            state = _State(self, self._base_keys())
            audited = [c for c in audit[:AUDIT_BATCH] if c.node == node]
            broken = tuple(c.conn_id for c in audited if not self._whole(state, c))
            dead: dict[str, float] = state.get(self._dead, dict)
            if dead.get(node, 0.0) > now:
                return RefreshResult(counted_out=True)
            nodes: dict[str, float] = state.get(self._nodes, dict)
            beating: dict[str, bool] = state.get(self._live, dict)
            lost = node not in beating
            beating[node] = True
            nodes[node] = now + self.ttl
            state.mark(self._nodes)
            state.mark(self._live)
            inbox: dict[str, list[tuple[str, str, int | None]]] = state.get(self._inbox, dict)
            notices = inbox.pop(node, [])
            if notices:
                state.mark(self._inbox)
            expired, more = self._reap(state, now, SWEEP_BATCH)
            settled = self._settle(state, now)
            others = [at for n, at in nodes.items() if n != node]
            state.save()
            return RefreshResult(
                closed=tuple(cid for cid, _, _ in notices),
                close_reasons={cid: why for cid, why, _ in notices},
                close_codes={cid: code for cid, _, code in notices if code is not None},
                expired=expired,
                settled=settled,
                lost=lost,
                more=more,
                next_check=max(0.0, min(others) - now) if others else None,
                broken=broken,
            )

        return self._run(op)

    def _whole(self, state: _State, conn: Connection) -> bool:
        """Whether the store holds all of a live connection: its record, its
        user's index, each of its groups' members and counts."""
        conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
        users: dict[str, dict[str, float]] = state.get(self._users, dict)
        rec = conns.get(conn.channel_name)
        if rec is None:
            # Removed (evicted, kicked: its node closes it) unless some of it is left.
            return not self._remnants(state, conn)
        user = rec["u"]
        if user is not None and conn.channel_name not in users.get(user, {}):
            return False
        for group in rec["g"]:
            members: dict[str, str | None] = state.get(self._g(group), dict)
            per_user: dict[str, int] = state.get(self._gu(group), dict)
            counts = state.get(self._gn(group), lambda: [0, 0])
            if conn.channel_name not in members or (user is not None and user not in per_user):
                return False
            if list(counts) != [len(members), len(per_user)]:
                return False
            if state.get(self._registry, dict).get(group) != len(members):
                return False
        return True

    def repair(self, connections: tuple[Connection, ...], policy: SessionPolicy) -> RestoreResult:
        def op() -> RestoreResult:
            now = time.time()
            groups = {g for c in connections for g in c.groups}
            state = _State(self, self._base_keys() + self._group_keys(groups))
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            repaired, refused, logged_out = 0, [], []
            for conn in connections:
                rec = conns.get(conn.channel_name)
                if rec is not None:
                    conn = _to_connection(conn.channel_name, rec)
                elif not self._remnants(state, conn):
                    continue  # removed meanwhile, not lost: its node closes it
                # What is left of it goes, quietly; then it is written whole.
                self._remove(state, conn.channel_name, now)
                self._remove_lost(state, conn, now)
                self._drop_pending(state, conn)
                if rec is None and conn.user is not None and self._fenced(state, conn, now):
                    logged_out.append(conn.conn_id)
                    continue
                mine = [] if conn.user is None else self._user_channels(state, conn.user)
                limit = policy.max_connections
                if rec is None and (
                    self._over_limit(state, conn, mine, policy)
                    or (limit is not None and len(mine) >= limit)
                ):
                    refused.append(conn.conn_id)
                    continue
                self._record(state, conn)
                repaired += 1
            state.save()
            return RestoreResult(
                restored=repaired, refused=tuple(refused), logged_out=tuple(logged_out)
            )

        return self._run(op)

    def _remnants(self, state: _State, conn: Connection) -> bool:
        """Whether anything is left of a connection whose record is gone."""
        users: dict[str, dict[str, float]] = state.get(self._users, dict)
        if conn.user is not None and conn.channel_name in users.get(conn.user, {}):
            return True
        return any(conn.channel_name in state.get(self._g(g), dict) for g in conn.groups)

    def _drop_pending(self, state: _State, conn: Connection) -> None:
        # A repair announces nothing: the departures its removal marked go.
        if conn.user is not None:
            for group in (None, *conn.groups):
                self._back_in_time(state, conn.user, group)

    def restore(self, connections: tuple[Connection, ...], policy: SessionPolicy) -> RestoreResult:
        def op() -> RestoreResult:
            now = time.time()
            groups = {g for c in connections for g in c.groups}
            state = _State(self, self._base_keys() + self._group_keys(groups))
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            restored, refused, logged_out = 0, [], []
            for conn in connections:
                if conn.channel_name in conns:
                    continue
                self._register(state, conn.node, now, live=True)
                if conn.user is not None and self._fenced(state, conn, now):
                    logged_out.append(conn.conn_id)
                    continue
                mine = [] if conn.user is None else self._user_channels(state, conn.user)
                limit = policy.max_connections
                if self._over_limit(state, conn, mine, policy) or (
                    limit is not None and len(mine) >= limit
                ):
                    refused.append(conn.conn_id)
                    continue
                self._record(state, conn)
                restored += 1
            state.save()
            return RestoreResult(
                restored=restored, refused=tuple(refused), logged_out=tuple(logged_out)
            )

        return self._run(op)

    def reset(self, node: str) -> None:
        def op() -> None:
            state = _State(self, self._base_keys())
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            mine = [ch for ch, rec in conns.items() if _node(rec["n"]) == node]
            self._remove_all(state, mine, time.time())
            state.save()

        self._run(op)

    async def areset(self, node: str) -> None:
        await self._async(self.reset, node)

    def retire(self, node: str) -> bool:
        def op() -> bool:
            state = _State(self, self._base_keys())
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            if any(_node(rec["n"]) == node for rec in conns.values()):
                return False
            nodes: dict[str, float] = state.get(self._nodes, dict)
            inbox: dict[str, list[Any]] = state.get(self._inbox, dict)
            beating: dict[str, bool] = state.get(self._live, dict)
            nodes.pop(node, None)
            inbox.pop(node, None)
            beating.pop(node, None)
            state.mark(self._live)
            state.mark(self._nodes)
            state.mark(self._inbox)
            state.save()
            return True

        return self._run(op)

    def _remove_all(
        self,
        state: _State,
        channels: list[str],
        now: float,
        why: str | None = None,
        code: int | None = None,
    ) -> tuple[Departure, ...]:
        conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
        groups = {g for ch in channels for g in conns.get(ch, {}).get("g", ())}
        for key in self._group_keys(groups):
            state.get(key, dict)
        removed = (self._remove(state, ch, now, why, code) for ch in channels)
        return tuple(d for d in removed if d is not None)

    def disconnect_user(
        self,
        user: str,
        session: str | None = None,
        reason: str = "kicked",
        code: int | None = None,
    ) -> tuple[Departure, ...]:
        def op() -> tuple[Departure, ...]:
            now = time.time()
            state = _State(self, self._base_keys())
            conns: dict[str, dict[str, Any]] = state.get(self._conns, dict)
            channels = self._user_channels(state, user)
            if session is not None:
                channels = [ch for ch in channels if conns.get(ch, {}).get("s") == session]
            departures = self._remove_all(state, channels, now, reason, code)
            state.save()
            return departures

        return self._run(op)

    def settle(self) -> tuple[Absence, ...]:
        def op() -> tuple[Absence, ...]:
            state = _State(self, [self._pending, self._users])
            settled = self._settle(state, time.time())
            state.save()
            return settled

        return self._run(op)

    def sweep(self) -> tuple[Departure, ...]:
        def op() -> tuple[Departure, ...]:
            state = _State(self, self._base_keys())
            departures, _ = self._reap(state, time.time(), 10**9)
            state.save()
            return departures

        return self._run(op)

    # Reads ------------------------------------------------------------------

    def group_size(self, group: str) -> int:
        counts = self.cache.get(self._gn(group))
        return int(counts[0]) if counts else 0

    def group_user_count(self, group: str) -> int:
        counts = self.cache.get(self._gn(group))
        return int(counts[1]) if counts else 0

    def group_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        found = self.cache.get_many([self._gn(g) for g in groups])
        return {g: int(found.get(self._gn(g), (0, 0))[0]) for g in groups}

    def group_members(self, group: str) -> tuple[GroupMember, ...]:
        now = time.time()
        by_user: dict[str | None, list[Connection]] = {}
        # Under the lock: in process memory these are the live dicts themselves.
        with _LOCK:
            members: dict[str, str | None] = self.cache.get(self._g(group)) or {}
            conns: dict[str, dict[str, Any]] = self.cache.get(self._conns) or {}
            nodes: dict[str, float] = self.cache.get(self._nodes) or {}
            for ch, user in members.items():
                rec = conns.get(ch)
                if rec is not None and nodes.get(_node(rec["n"]), 0.0) > now:
                    by_user.setdefault(user, []).append(_to_connection(ch, rec))
        return tuple(
            GroupMember(user, tuple(sorted(cs, key=lambda c: c.connected_at)))
            for user, cs in by_user.items()
        )

    def group_users(self, group: str) -> tuple[str, ...]:
        with _LOCK:
            per_user: dict[str, int] = self.cache.get(self._gu(group)) or {}
            return tuple(per_user)

    def user_connections(self, user: str) -> tuple[Connection, ...]:
        now = time.time()
        with _LOCK:
            mine: dict[str, float] = (self.cache.get(self._users) or {}).get(user, {})
            conns: dict[str, dict[str, Any]] = self.cache.get(self._conns) or {}
            nodes: dict[str, float] = self.cache.get(self._nodes) or {}
            live = [
                _to_connection(ch, conns[ch])
                for ch in mine
                if ch in conns and nodes.get(_node(conns[ch]["n"]), 0.0) > now
            ]
        return tuple(sorted(live, key=lambda c: (c.connected_at, c.channel_name)))

    def groups(self) -> dict[str, int]:
        with _LOCK:
            registry: dict[str, int] = self.cache.get(self._registry) or {}
            return dict(sorted(registry.items()))

    def group_count(self) -> int:
        with _LOCK:
            return len(self.cache.get(self._registry) or {})

    def close(self) -> None:
        """Nothing to release: the cache belongs to Django."""

    # Async forms: the operations above only touch process memory when the
    # cache is local memory, so running them inline never blocks the loop for
    # long; other backends do I/O and run in a worker thread.

    async def _async(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline:
            return fn(*args)
        return await sync_to_async(fn, thread_sensitive=False)(*args)

    @property
    def _inline(self) -> bool:
        return isinstance(self.cache, ProcessMemory) or type(self.cache).__name__ == "DummyCache"

    async def aconnect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        return await self._async(self.connect, connection, policy)

    async def adisconnect(self, connection: Connection) -> Departure | None:
        return await self._async(self.disconnect, connection)

    async def ajoin(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        return await self._async(self.join, connection, groups)

    async def aleave(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        return await self._async(self.leave, connection, groups)

    async def aset_meta(self, connection: Connection, meta: dict[str, Any] | None) -> bool:
        return await self._async(self.set_meta, connection, meta)

    async def arefresh(self, node: str, audit: tuple[Connection, ...] = ()) -> RefreshResult:
        return await self._async(self.refresh, node, audit)

    async def arepair(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult:
        return await self._async(self.repair, connections, policy)

    async def arestore(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult:
        return await self._async(self.restore, connections, policy)

    async def aretire(self, node: str) -> bool:
        return await self._async(self.retire, node)

    async def adisconnect_user(
        self,
        user: str,
        session: str | None = None,
        reason: str = "kicked",
        code: int | None = None,
    ) -> tuple[Departure, ...]:
        return await self._async(self.disconnect_user, user, session, reason, code)

    async def asweep(self) -> tuple[Departure, ...]:
        return await self._async(self.sweep)

    async def asettle(self) -> tuple[Absence, ...]:
        return await self._async(self.settle)

    async def agroup_size(self, group: str) -> int:
        return await self._async(self.group_size, group)

    async def agroup_user_count(self, group: str) -> int:
        return await self._async(self.group_user_count, group)

    async def agroup_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        return await self._async(self.group_sizes, groups)

    async def agroup_members(self, group: str) -> tuple[GroupMember, ...]:
        return await self._async(self.group_members, group)

    async def agroup_users(self, group: str) -> tuple[str, ...]:
        return await self._async(self.group_users, group)

    async def auser_connections(self, user: str) -> tuple[Connection, ...]:
        return await self._async(self.user_connections, user)

    async def agroups(self) -> dict[str, int]:
        return await self._async(self.groups)

    async def agroup_count(self) -> int:
        return await self._async(self.group_count)

    async def aclose(self) -> None:
        self.close()


def _to_connection(channel: str, rec: dict[str, Any]) -> Connection:
    return Connection(
        channel_name=channel,
        user=rec["u"],
        session=rec["s"],
        connected_at=rec["t"],
        groups=tuple(rec["g"]),
        # A copy: callers must not reach into the store's own dicts.
        meta=dict(rec["m"]) if rec["m"] is not None else None,
        conn_id=rec["n"],
    )


def _node(conn_id: str) -> str:
    return conn_id.partition(".")[0]


class ProcessMemory:
    """The slice of the cache API the store uses, on plain dicts.

    Used in place of a ``LocMemCache``, which is private to the process too
    but pickles every value on each access (making every operation O(n) in
    the connections) and culls keys once it holds ``MAX_ENTRIES`` (300 by
    default, shared with the site's own caching): presence must not be
    evicted to make room for a cached page.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return {k: self.data[k] for k in keys if k in self.data}

    def set_many(self, mapping: dict[str, Any], timeout: Any = None) -> list[str]:
        self.data.update(mapping)
        return []

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()


_memories: dict[str, ProcessMemory] = {}


def _memory(alias: str) -> ProcessMemory:
    # One per cache alias, like the LocMemCache it stands in for.
    with _LOCK:
        return _memories.setdefault(alias, ProcessMemory())


def _is_local_memory(cache: Any) -> bool:
    return isinstance(cache, LocMemCache)


def clear_process_memory() -> None:
    """Forget every presence state kept in process memory (for tests)."""
    with _LOCK:
        for memory in _memories.values():
            memory.clear()
