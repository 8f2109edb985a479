"""The protocol every presence store implements, and the records it passes.

A store keeps the presence state: which connection belongs to which user and
Django session, and which groups it is in. Liveness is per node (one event
loop of one server process), not per connection: each node's heartbeat keeps
all of its connections alive with one small write, and when a node stops
beating, the others remove its connections in bounded batches. The store
knows nothing about consumers or the channel layer: the caller closes evicted
connections and discards expired ones from layer groups.

Departures are announced after a grace period (``LEAVE_GRACE``): the store
records each user's pending "left"/"offline", a reconnect within the grace
cancels it, and :meth:`PresenceStore.settle` (also run by every heartbeat)
claims those due, atomically, so each is announced exactly once even when the
process that saw the departure has died.

Every operation exists twice, ``aname`` for the event loop and ``name`` for
synchronous code (views, tasks, the shell). User keys are strings (``str(pk)``);
``None`` stands for an anonymous connection, which is counted as a connection
but never as a user. Group names reach the store already validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

SessionScope = Literal["user", "session"]

#: How long a logout's fence refuses connects: long enough for any connect
#: that was in flight (a slow hook, a retrying client) to reach the store.
FENCE_SECONDS = 300
OnLimit = Literal["close_oldest", "reject_new"]
#: Live connections one heartbeat has the store check for keys lost on their
#: own (evicted, deleted); a node audits all of its connections in turn.
AUDIT_BATCH = 50


@dataclass(frozen=True)
class Connection:
    """One live websocket connection as the store records it."""

    channel_name: str
    #: ``str(user.pk)``, or ``None`` for an anonymous connection.
    user: str | None
    #: The Django session key, or ``None`` when the scope has no session.
    session: str | None
    #: Seconds since the epoch, on the store's clock.
    connected_at: float = 0.0
    groups: tuple[str, ...] = ()
    #: Small JSON-serialisable data attached by the consumer.
    meta: dict[str, Any] | None = None
    #: The store's short id of the connection: ``"<node>.<seq>"``, given by
    #: the heartbeat of the event loop (the node) that keeps it alive.
    conn_id: str = ""
    #: When the socket's request reached presence (seconds since the epoch, on
    #: the server's clock); a logout after it fences it out. 0: unknown.
    opened_at: float = 0.0

    @property
    def node(self) -> str:
        """The node (one event loop of one server process) holding the connection."""
        return self.conn_id.partition(".")[0]

    @property
    def session_id(self) -> str:
        """What counts as one session under ``SESSION_SCOPE="session"``.

        A connection without a Django session is a session of its own.
        """
        return self.session or f"channel:{self.channel_name}"


@dataclass(frozen=True)
class SessionPolicy:
    """How many sessions a user may hold, and what happens past the limit."""

    #: ``None`` means unlimited.
    max_sessions: int | None = 1
    scope: SessionScope = "user"
    on_limit: OnLimit = "close_oldest"
    #: Connections one user may hold at once, whatever their sessions.
    max_connections: int | None = None
    #: The close code the evicted are told to close with.
    close_code: int = 4001


@dataclass(frozen=True)
class Departure:
    """A connection that left the store, and what its leaving changed.

    With a leave grace, ``user_left`` and ``went_offline`` are only pending:
    the store announces them through :meth:`PresenceStore.settle` once the
    grace has passed, unless the user came back in time.
    """

    connection: Connection
    #: Groups in which this was the user's last live connection.
    user_left: tuple[str, ...] = ()
    #: This was the user's last live connection anywhere.
    went_offline: bool = False


@dataclass(frozen=True)
class ConnectResult:
    """The outcome of recording a new connection."""

    #: ``False`` when a limit refused it; nothing was written then.
    accepted: bool
    #: Older connections removed to make room. The caller must close them.
    evicted: tuple[Departure, ...] = ()
    #: This is the user's first live connection anywhere, and they were not
    #: merely back within the leave grace.
    came_online: bool = False
    #: Groups in which this is the user's first live connection (same rule).
    user_joined: tuple[str, ...] = ()
    #: When the store recorded the connection, on the store's clock.
    connected_at: float = 0.0
    #: Why it was refused: ``"limit"`` (``reject_new``), ``"connections"``
    #: (``MAX_CONNECTIONS_PER_USER``), ``"logged_out"`` (its session, or its
    #: user, logged out while it was connecting) or ``"counted_out"`` (its
    #: node missed its heartbeats and was removed: the node must start afresh).
    refused: str = ""


@dataclass(frozen=True)
class Absence:
    """A user's departure that outlasted ``LEAVE_GRACE``: time to announce it.

    ``group`` is ``None`` when the user went offline altogether.
    """

    user: str
    group: str | None = None


@dataclass(frozen=True)
class RefreshResult:
    """What a node's heartbeat learnt from the store."""

    #: Local connections removed by someone else (evicted, ``disconnect_user``,
    #: a logout): close them, whether or not their close message arrived.
    closed: tuple[str, ...] = ()
    #: Why each of ``closed`` was removed: ``"superseded"``, ``"kicked"``, ...
    close_reasons: dict[str, str] = field(default_factory=dict)
    #: The close code asked for each of ``closed``.
    close_codes: dict[str, int] = field(default_factory=dict)
    #: Connections of dead nodes removed by this call. Discard them from
    #: their channel-layer groups and announce them.
    expired: tuple[Departure, ...] = ()
    #: Departures whose grace ran out, claimed by this call (exactly once overall).
    settled: tuple[Absence, ...] = ()
    #: The store had no record of this node (flushed, restarted empty), or an
    #: older one (restored from a snapshot): reset it and write its
    #: connections back with :meth:`PresenceStore.arestore`.
    lost: bool = False
    #: The node missed its heartbeats and was counted out: its connections
    #: are gone from the store. Close them; start a new node.
    counted_out: bool = False
    #: Dead nodes, removals or departures are left over: beat again soon.
    more: bool = False
    #: Seconds until another node's deadline passes (``None``: no other node).
    next_check: float | None = None
    #: Audited connections of the node that the store holds only in part (a
    #: key lost on its own): put them back with :meth:`PresenceStore.arepair`.
    broken: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreResult:
    """What writing a node's connections back achieved."""

    restored: int = 0
    #: Connections not written back: their user is at a limit now (a connect
    #: that landed after the loss took the place). Close them as superseded.
    refused: tuple[str, ...] = ()
    #: Connections not written back because their session (or their user)
    #: logged out since they opened. Close them as logged out.
    logged_out: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupMember:
    """A user present in a group, with their connections there."""

    user: str | None
    connections: tuple[Connection, ...] = field(default_factory=tuple)


@runtime_checkable
class PresenceStore(Protocol):
    """Where presence lives. One implementation per backend."""

    # Writes ---------------------------------------------------------------

    async def aconnect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult:
        """Record ``connection``, apply ``policy`` and join its groups, atomically.

        ``connection.conn_id`` names it from here on; its node is kept alive
        by :meth:`arefresh`.
        """
        ...

    def connect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult: ...

    async def adisconnect(self, connection: Connection) -> Departure | None:
        """Remove a connection from everything; ``None`` if it was not there.

        Should its record be lost (a key evicted) though it was never removed,
        it is counted out of ``connection.groups`` where they still count it.
        """
        ...

    def disconnect(self, connection: Connection) -> Departure | None: ...

    async def ajoin(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Add a recorded connection to groups; return those the user newly joined."""
        ...

    def join(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]: ...

    async def aleave(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Remove a connection from groups; return those the user no longer is in."""
        ...

    def leave(self, connection: Connection, groups: tuple[str, ...]) -> tuple[str, ...]: ...

    async def aset_meta(self, connection: Connection, meta: dict[str, Any] | None) -> bool:
        """Replace a connection's metadata; ``False`` if it is not recorded."""
        ...

    def set_meta(self, connection: Connection, meta: dict[str, Any] | None) -> bool: ...

    async def arefresh(self, node: str, audit: tuple[Connection, ...] = ()) -> RefreshResult:
        """Keep ``node`` alive for another TTL: one small write, whatever it holds.

        Also hands over the node's connections removed by others, removes a
        bounded batch of dead nodes' connections and claims due departures.
        ``audit`` is a bounded slice of the node's live connections: those
        the store holds only in part are returned in ``broken``.
        """
        ...

    def refresh(self, node: str, audit: tuple[Connection, ...] = ()) -> RefreshResult: ...

    async def arepair(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult:
        """Put back what the store lost of live connections (``RefreshResult.broken``).

        A lost record is written back under ``policy``'s limits (refused:
        counted out of its groups, returned in ``refused``); lost bucket
        entries and group counts are rebuilt.
        """
        ...

    def repair(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult: ...

    async def arestore(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult:
        """Write back connections the store lost, under ``policy``'s limits.

        The caller passes a bounded batch; connections already recorded are left as they are.
        """
        ...

    def restore(
        self, connections: tuple[Connection, ...], policy: SessionPolicy
    ) -> RestoreResult: ...

    async def areset(self, node: str) -> None:
        """Remove ``node``'s own connections without announcing anything.

        Before its heartbeat writes them back after the store lost or rewound
        them: what the store holds of the node may be older than the truth
        (a restore from a snapshot), and the node holds the truth.
        """
        ...

    def reset(self, node: str) -> None: ...

    async def aretire(self, node: str) -> bool:
        """Forget a node that stops with no connection left; ``False`` if it still has some."""
        ...

    def retire(self, node: str) -> bool: ...

    async def afence(self, user: str, session: str | None = None) -> None:
        """Refuse the connects a logout must stop, for ``FENCE_SECONDS``.

        With ``session``, any connect of that Django session key; without, any
        connect of ``user`` whose socket opened before now. Connects already
        in flight when the logout came are refused (``refused="logged_out"``).
        """
        ...

    def fence(self, user: str, session: str | None = None) -> None: ...

    async def adisconnect_user(
        self,
        user: str,
        session: str | None = None,
        reason: str = "kicked",
        code: int | None = None,
    ) -> tuple[Departure, ...]:
        """Remove every connection of ``user`` (of one Django session, if given).

        The caller tells them to close; each one's node also learns of it at
        its next heartbeat (with ``reason`` and ``code``), should the
        caller's message be lost. Works in bounded batches.
        """
        ...

    def disconnect_user(
        self,
        user: str,
        session: str | None = None,
        reason: str = "kicked",
        code: int | None = None,
    ) -> tuple[Departure, ...]: ...

    async def asettle(self) -> tuple[Absence, ...]:
        """Claim the pending departures whose grace has run out.

        Each is returned by exactly one call, across all processes; a user
        who came back within the grace cancelled theirs.
        """
        ...

    def settle(self) -> tuple[Absence, ...]: ...

    async def asweep(self) -> tuple[Departure, ...]:
        """Remove every connection of every dead node now, in batches; return them."""
        ...

    def sweep(self) -> tuple[Departure, ...]: ...

    # Reads ----------------------------------------------------------------

    async def agroup_size(self, group: str) -> int:
        """Live connections in ``group``."""
        ...

    def group_size(self, group: str) -> int: ...

    async def agroup_user_count(self, group: str) -> int:
        """Distinct users with a live connection in ``group``."""
        ...

    def group_user_count(self, group: str) -> int: ...

    async def agroup_sizes(self, groups: tuple[str, ...]) -> dict[str, int]:
        """Live connections of many groups at once."""
        ...

    def group_sizes(self, groups: tuple[str, ...]) -> dict[str, int]: ...

    async def agroup_members(self, group: str) -> tuple[GroupMember, ...]:
        """The users present in ``group`` (anonymous ones under ``None``)."""
        ...

    def group_members(self, group: str) -> tuple[GroupMember, ...]: ...

    async def agroup_users(self, group: str) -> tuple[str, ...]:
        """The users with a live connection in ``group``, without their records."""
        ...

    def group_users(self, group: str) -> tuple[str, ...]: ...

    async def auser_connections(self, user: str) -> tuple[Connection, ...]:
        """A user's live connections, oldest first."""
        ...

    def user_connections(self, user: str) -> tuple[Connection, ...]: ...

    async def agroups(self) -> dict[str, int]:
        """Every group with at least one live connection, with its size."""
        ...

    def groups(self) -> dict[str, int]: ...

    async def agroup_count(self) -> int:
        """How many groups have a connection: one O(1) read."""
        ...

    def group_count(self) -> int: ...

    async def aclose(self) -> None:
        """Release connections held by this store."""
        ...

    def close(self) -> None: ...
