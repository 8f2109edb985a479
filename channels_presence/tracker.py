"""The presence of one websocket connection.

:class:`PresenceMiddleware` puts a :class:`PresenceTracker` in
``scope["presence"]``; :class:`PresenceConsumerMixin` drives it. The tracker
records the connection in the store, keeps its channel-layer groups in step
with its presence groups, and removes everything when the connection ends,
however it ends. Every method is safe to call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import events, listeners
from .closing import close_code, close_departed, layer_call
from .conf import get_settings
from .exceptions import InvalidMetadata, NotConnected, StoreUnavailable, TooManyGroups
from .heartbeat import get_heartbeat
from .logs import is_outage, layer_failures, logger, store_failures
from .names import validate_group_names
from .stores import get_store, session_policy
from .stores.base import Connection, ConnectResult, Departure, PresenceStore

#: Removals under way: referenced here, so none is collected before it ends.
_removals: set[asyncio.Future[Any]] = set()


class State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class Admission:
    """Whether a new connection may proceed, and if not, the close code."""

    accepted: bool
    close_code: int | None = None


def check_metadata(meta: Any) -> dict[str, Any] | None:
    """Return ``meta`` if it is a small JSON object, else raise InvalidMetadata."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise InvalidMetadata(
            f"Presence metadata must be a dict (a JSON object), not {type(meta).__name__}."
        )
    try:
        encoded = json.dumps(meta, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMetadata(f"Presence metadata is not JSON-serialisable: {exc}") from None
    limit = get_settings().METADATA_MAX_BYTES
    size = len(encoded.encode())
    if size > limit:
        raise InvalidMetadata(
            f"Presence metadata is {size} bytes as JSON; METADATA_MAX_BYTES allows {limit}."
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def check_group_count(count: int) -> None:
    """Raise TooManyGroups if a connection would be in more than the allowed groups."""
    limit = get_settings().MAX_GROUPS_PER_CONNECTION
    if count > limit:
        raise TooManyGroups(
            f"A connection would be in {count} presence groups; "
            f"MAX_GROUPS_PER_CONNECTION allows {limit}."
        )


class PresenceTracker:
    """Presence bookkeeping for one websocket connection."""

    def __init__(self, *, user: str | None, session: str | None, tracked: bool) -> None:
        #: ``str(user.pk)``, or ``None`` when anonymous.
        self.user = user
        self.session = session
        #: ``False`` for an anonymous connection under ``ANONYMOUS="ignore"``.
        self.tracked = tracked
        self.channel_name: str | None = None
        self.channel_layer: Any = None
        self.groups: tuple[str, ...] = ()
        self.meta: dict[str, Any] | None = None
        self.connected_at = 0.0
        #: The store's id of this connection, given by the loop's heartbeat.
        self.conn_id = ""
        #: When the socket's request reached presence: a logout after it
        #: refuses the connect should it land later (a slow hook).
        self.opened_at = time.time()
        #: Closes the socket directly (set by the consumer): the heartbeat's
        #: last resort when a close through the layer does not land.
        self.closer: Callable[[int], Awaitable[None]] | None = None
        self.state = State.NEW
        #: Whether the store holds this connection (it may not, after a store error).
        self.recorded = False
        #: When (``time.monotonic()``) its socket ended or its application
        #: began to end; the heartbeat drops it from presence should the
        #: application not have finished ``STUCK_AFTER`` seconds later.
        self.ended_at: float | None = None
        self._connecting: asyncio.Future[ConnectResult] | None = None
        #: The removal that ``adisconnect`` started (it outlives a cancellation).
        self._removal: asyncio.Future[Departure | None] | None = None

    def __repr__(self) -> str:
        return (
            f"<PresenceTracker user={self.user!r} channel={self.channel_name!r} "
            f"state={self.state.value}>"
        )

    @property
    def store(self) -> PresenceStore:
        return get_store()

    def snapshot(self) -> Connection:
        """This connection as the store records it."""
        assert self.channel_name is not None
        return Connection(
            channel_name=self.channel_name,
            user=self.user,
            session=self.session,
            connected_at=self.connected_at,
            groups=self.groups,
            meta=self.meta,
            conn_id=self.conn_id,
            opened_at=self.opened_at,
        )

    # Lifecycle ----------------------------------------------------------------

    async def aconnect(
        self,
        channel_layer: Any,
        channel_name: str,
        groups: Any = (),
        meta: Any = None,
    ) -> Admission:
        """Record the connection, apply the session policy and join ``groups``.

        Bad group names or metadata raise before anything is written. Returns
        whether the connection may proceed; a refused one has joined nothing.
        """
        checked = validate_group_names(groups)
        check_group_count(len(checked))
        meta = check_metadata(meta)
        if self.state is not State.NEW:
            raise NotConnected(f"{self!r} was already connected once.")
        conf = get_settings()
        self.channel_layer = channel_layer
        self.channel_name = channel_name
        self.groups = checked
        self.meta = meta
        self.conn_id = get_heartbeat().new_conn_id()
        if self.tracked:
            admission = await self._record(conf.ON_STORE_ERROR, conf.REJECT_CODE)
            if not admission.accepted:
                self.state = State.CLOSED
                return admission
        self.state = State.CONNECTED
        if not self.tracked:
            get_heartbeat().add_layer_only(self)
        for group in checked:
            await self._layer_group_add(group)
        listeners.note_joined(checked if self.recorded else ())
        return Admission(True)

    async def _record(self, on_store_error: str, reject_code: int) -> Admission:
        heartbeat = get_heartbeat()
        try:
            result = await self._store_connect()
            if result.refused == "counted_out":
                # This loop stalled and was counted out before its heartbeat
                # noticed: close the stale connections, connect as a new node
                # (unless another connect or a beat did so meanwhile: the new
                # node's connections are not stale).
                if self.snapshot().node == heartbeat.node:
                    await heartbeat.counted_out()
                self.conn_id = heartbeat.new_conn_id()
                result = await self._store_connect()
        except asyncio.CancelledError:
            self.state = State.CONNECTED
            raise
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            if on_store_error == "reject":
                # The write may still land (a paused Redis runs it later):
                # the heartbeat removes it once the store answers.
                heartbeat.forget(self.snapshot())
                return Admission(False, 1011)
            # Proceed untracked; the heartbeat records it, under the session
            # policy, once the store is back.
            self.state = State.CONNECTED
            heartbeat.add(self)
            return Admission(True)
        store_failures.succeeded()
        if not result.accepted:
            if result.refused == "logged_out":
                return Admission(False, get_settings().LOGOUT_CODE)
            if result.refused == "connections":
                logger.warning(
                    "Refused a connection of user %s: MAX_CONNECTIONS_PER_USER (%s) reached.",
                    self.user,
                    get_settings().MAX_CONNECTIONS_PER_USER,
                )
            return Admission(False, reject_code)
        # Live from here on, before any other await: a cancellation now must
        # still find something to clean up.
        self.state = State.CONNECTED
        self.recorded = True
        heartbeat.add(self)
        await self._recorded(result)
        return Admission(True)

    async def _store_connect(self) -> ConnectResult:
        # Shielded: if this task is cancelled while the call runs, cleanup
        # waits for the store's answer and then removes what it wrote.
        self._connecting = asyncio.ensure_future(
            self.store.aconnect(self.snapshot(), session_policy())
        )
        return await asyncio.shield(self._connecting)

    async def _recorded(self, result: ConnectResult) -> None:
        self.recorded = True
        get_heartbeat().recorded(self)
        self.connected_at = result.connected_at or time.time()
        # The evicted are told to close before any receiver of the new
        # connection's events runs.
        await close_departed(
            self.channel_layer, result.evicted, close_code("superseded"), "superseded"
        )
        await events.connected(self.snapshot(), result)
        for departure in result.evicted:
            await events.departed(departure, reason="superseded")

    async def arecover(self) -> str | None:
        """Record a connection admitted while the store was down.

        It goes through the session policy like any connect: it may close the
        user's older connections. Returns why it was refused (``"rejected"``:
        ``reject_new`` or ``MAX_CONNECTIONS_PER_USER``; ``"logged_out"``), for
        the heartbeat to close it; ``None`` otherwise.
        """
        if self.state is not State.CONNECTED or self.recorded or not self.tracked:
            return None
        if self.ended_at is not None:  # its socket is gone: never announce it now
            return None
        connection = self.snapshot()
        try:
            result = await self.store.aconnect(connection, session_policy())
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return None
        store_failures.succeeded()
        if not result.accepted:
            return "logged_out" if result.refused == "logged_out" else "rejected"
        if self.state is not State.CONNECTED:
            # Its disconnect ran meanwhile, perhaps before this landed: remove it again.
            with contextlib.suppress(StoreUnavailable):
                await self.store.adisconnect(connection)
            return None
        await self._recorded(result)
        return None

    async def ajoin(self, groups: Any) -> tuple[str, ...]:
        """Join more groups; returns the groups that were new for this connection."""
        checked = validate_group_names(groups)
        if not self._require_connected():
            return ()
        new = tuple(g for g in checked if g not in self.groups)
        if not new:
            return ()
        check_group_count(len(self.groups) + len(new))
        self.groups = self.groups + new
        assert self.channel_name is not None
        for group in new:
            await self._layer_group_add(group)
        if self.tracked and self.recorded:
            try:
                joined = await self.store.ajoin(self.snapshot(), new)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
                get_heartbeat().missed_write()
            else:
                store_failures.succeeded()
                listeners.note_joined(new)
                await events.joined(self.user, joined)
        return new

    async def aleave(self, groups: Any) -> tuple[str, ...]:
        """Leave groups; returns the groups this connection was in."""
        checked = validate_group_names(groups)
        if not self._require_connected():
            return ()
        gone = tuple(g for g in checked if g in self.groups)
        if not gone:
            return ()
        self.groups = tuple(g for g in self.groups if g not in gone)
        assert self.channel_name is not None
        if self.tracked and self.recorded:
            try:
                left = await self.store.aleave(self.snapshot(), gone)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
                get_heartbeat().missed_write()
            else:
                store_failures.succeeded()
                listeners.note_left(gone)
                await events.left(self.user, left)
        for group in gone:
            try:
                await layer_call(self.channel_layer.group_discard, group, self.channel_name)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # A restarted layer forgot the group anyway; a layer that kept
                # it expires the membership after its group_expiry.
                layer_failures.failed(exc)
        return gone

    async def _layer_group_add(self, group: str) -> None:
        """Add this socket to a layer group; during a layer outage, leave that to
        the heartbeat (it puts sockets back into their groups once the layer is back)."""
        try:
            await layer_call(self.channel_layer.group_add, group, self.channel_name)
        except Exception as exc:
            if not is_outage(exc):
                raise
            layer_failures.failed(exc)
            self.layer_failed()

    async def aset_meta(self, meta: Any) -> None:
        """Replace this connection's metadata (a small JSON object, or None)."""
        checked = check_metadata(meta)
        if not self._require_connected():
            return
        self.meta = checked
        if self.tracked and self.recorded:
            assert self.channel_name is not None
            try:
                await self.store.aset_meta(self.snapshot(), checked)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
                get_heartbeat().missed_write()
            else:
                store_failures.succeeded()

    async def adisconnect(self) -> Departure | None:
        """Remove the connection from the store and its layer groups; idempotent.

        The removal runs as a task of its own: a disconnect cancelled half way
        (a server giving up on a slow application) still reaches the store
        and the layer and announces the departure, and a later call (the
        middleware's) waits for it. Only the first call returns the departure.
        """
        if self.state is not State.CONNECTED:
            self.state = State.CLOSED
            if self._removal is not None and not self._removal.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._removal)
            return None
        self.state = State.CLOSED
        get_heartbeat().discard(self)
        self._removal = removal = asyncio.ensure_future(self._remove())
        _removals.add(removal)
        removal.add_done_callback(_removals.discard)
        return await asyncio.shield(removal)

    async def _remove(self) -> Departure | None:
        departure: Departure | None = None
        if self.tracked:
            assert self.channel_name is not None
            if self._connecting is not None and not self._connecting.done():
                # A cancelled connect: let its script land before removing it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._connecting)
            try:
                departure = await self.store.adisconnect(self.snapshot())
            except StoreUnavailable as exc:
                # The record may be there still (its node lives on): removed
                # once the store answers.
                store_failures.failed(exc)
                get_heartbeat().forget(self.snapshot(), announce=True)
            else:
                store_failures.succeeded()
        self.recorded = False
        if self.channel_layer is not None and self.channel_name is not None:
            for group in self.groups:
                try:
                    await layer_call(self.channel_layer.group_discard, group, self.channel_name)
                except Exception as exc:  # cleanup goes on for the rest
                    logger.warning("group_discard(%r) failed on close: %s", group, exc)
        if departure is not None:
            listeners.note_left(departure.connection.groups)
            await events.departed(departure, reason="disconnected")
        return departure

    def ended(self) -> None:
        """The socket ended, or the application is ending (a close was sent, the
        disconnect arrived, the consumer raised): its cleanup should follow."""
        if self.ended_at is None:
            self.ended_at = time.monotonic()
            if self.state is State.CONNECTED and self.tracked:
                get_heartbeat().ending(self)

    def is_open(self) -> bool:
        """Whether the socket is still open (connected, not yet disconnected)."""
        return self.state is State.CONNECTED

    async def force_close(self, code: int) -> None:
        """Close the socket directly, without the channel layer."""
        if self.closer is not None and self.is_open():
            await self.closer(code)

    async def rejoin_layer_groups(self) -> None:
        """Add this connection to its channel-layer groups again (after a layer outage)."""
        if self.is_open() and self.channel_layer is not None and self.channel_name is not None:
            for group in self.groups:
                await layer_call(self.channel_layer.group_add, group, self.channel_name)

    def layer_failed(self) -> None:
        """The channel layer failed: the heartbeat puts sockets back into its groups."""
        get_heartbeat().layer_failed()

    def _require_connected(self) -> bool:
        """True while connected; False once closed (a late client command is
        not an error: the socket is going); raises before the connect."""
        if self.state is State.NEW:
            raise NotConnected(
                "This connection is not connected yet; presence groups and metadata can "
                "change only between connect and disconnect."
            )
        return self.state is State.CONNECTED
