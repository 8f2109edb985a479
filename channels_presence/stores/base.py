"""The protocol every presence store implements, and the records it passes.

A store keeps the presence state: which connection (a channel name) belongs
to which user and Django session, which groups it is in, and until when it
counts as alive. It knows nothing about consumers or the channel layer: the
caller closes evicted connections and discards expired ones from layer groups.

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
OnLimit = Literal["close_oldest", "reject_new"]


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

    #: ``False`` when ``reject_new`` refused it; nothing was written then.
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


@dataclass(frozen=True)
class Absence:
    """A user's departure that outlasted ``LEAVE_GRACE``: time to announce it.

    ``group`` is ``None`` when the user went offline altogether.
    """

    user: str
    group: str | None = None


@dataclass(frozen=True)
class RefreshResult:
    """What a heartbeat learnt from the store."""

    #: Local connections the store no longer wants (evicted or disconnected
    #: from elsewhere while their close message was in flight). Close them.
    closed: tuple[str, ...] = ()
    #: Why each of ``closed`` was removed: ``"superseded"``, ``"kicked"``,
    #: ``"expired"`` or ``"disconnected"``.
    close_reasons: dict[str, str] = field(default_factory=dict)
    #: Connections of any process whose time ran out, now swept. Discard
    #: them from their channel-layer groups.
    expired: tuple[Departure, ...] = ()
    #: Local connections that were missing (store flushed) and were written again.
    restored: int = 0
    #: Departures whose grace ran out, claimed by this call (exactly once overall).
    settled: tuple[Absence, ...] = ()


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
        """Record ``connection``, apply ``policy`` and join its groups, atomically."""
        ...

    def connect(self, connection: Connection, policy: SessionPolicy) -> ConnectResult: ...

    async def adisconnect(self, channel_name: str) -> Departure | None:
        """Remove a connection from everything; ``None`` if it was not there."""
        ...

    def disconnect(self, channel_name: str) -> Departure | None: ...

    async def ajoin(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Add a recorded connection to groups; return those the user newly joined."""
        ...

    def join(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]: ...

    async def aleave(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Remove a connection from groups; return those the user no longer is in."""
        ...

    def leave(self, channel_name: str, groups: tuple[str, ...]) -> tuple[str, ...]: ...

    async def aset_meta(self, channel_name: str, meta: dict[str, Any] | None) -> bool:
        """Replace a connection's metadata; ``False`` if it is not recorded."""
        ...

    def set_meta(self, channel_name: str, meta: dict[str, Any] | None) -> bool: ...

    async def arefresh(
        self, connections: tuple[Connection, ...], policy: SessionPolicy | None = None
    ) -> RefreshResult:
        """Keep this process's connections alive, in one round trip.

        Re-writes any that are missing (unless that would take their user
        past ``policy``'s limit: those are reported closed as superseded),
        reports those that must close, and sweeps a bounded batch of expired
        entries of any process.
        """
        ...

    def refresh(
        self, connections: tuple[Connection, ...], policy: SessionPolicy | None = None
    ) -> RefreshResult: ...

    async def adisconnect_user(
        self, user: str, session: str | None = None, reason: str = "kicked"
    ) -> tuple[Departure, ...]:
        """Remove every connection of ``user`` (of one Django session, if given).

        The caller tells them to close; tombstones that remember ``reason``
        keep heartbeats from writing them back meanwhile, and close them
        should the caller's message be lost.
        """
        ...

    def disconnect_user(
        self, user: str, session: str | None = None, reason: str = "kicked"
    ) -> tuple[Departure, ...]: ...

    async def asettle(self) -> tuple[Absence, ...]:
        """Claim the pending departures whose grace has run out.

        Each is returned by exactly one call, across all processes; a user
        who came back within the grace cancelled theirs.
        """
        ...

    def settle(self) -> tuple[Absence, ...]: ...

    async def asweep(self) -> tuple[Departure, ...]:
        """Remove every expired entry now; return what was removed."""
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

    async def aclose(self) -> None:
        """Release connections held by this store."""
        ...

    def close(self) -> None: ...
