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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import events
from .conf import get_settings, session_policy
from .exceptions import InvalidMetadata, NotConnected, StoreUnavailable
from .heartbeat import get_heartbeat
from .logs import logger, store_failures
from .names import validate_group_names
from .stores import get_store
from .stores.base import Connection, ConnectResult, Departure

if TYPE_CHECKING:
    from .stores.base import PresenceStore

#: The channel-layer message type that closes a connection.
CLOSE_MESSAGE_TYPE = "presence.close"


class State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class Admission:
    """Whether a new connection may proceed, and if not, the close code."""

    accepted: bool
    close_code: int | None = None


def close_message(code: int, reason: str) -> dict[str, Any]:
    """The channel-layer message that asks a presence consumer to close."""
    return {"type": CLOSE_MESSAGE_TYPE, "code": code, "reason": reason}


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


#: Sent to a connection counted out after missing its heartbeats ("going away"):
#: its client should reconnect, not believe it signed in elsewhere.
EXPIRED_CLOSE_CODE = 1001


def close_code(reason: str) -> int:
    """The close code presence sends a connection it closes for ``reason``."""
    conf = get_settings()
    codes = {
        "expired": EXPIRED_CLOSE_CODE,
        "logged_out": conf.LOGOUT_CODE,
        "rejected": conf.REJECT_CODE,
    }
    return codes.get(reason, conf.CLOSE_CODE)


async def send_close(layer: Any, channel: str, code: int, reason: str) -> None:
    """Ask one connection to close; a layer failure is logged, never raised.

    A full inbox (ChannelFull) is likely exactly when the target is stuck,
    and must not stop the caller's connect, disconnect or heartbeat.
    """
    try:
        await layer.send(channel, close_message(code, reason))
    except Exception as exc:
        logger.warning("Could not close %s through the channel layer: %r", channel, exc)


async def close_departed(
    layer: Any, departures: tuple[Departure, ...], code: int, reason: str
) -> None:
    """Ask departed connections to close and take them out of their layer groups.

    Their own process may be dead; the group discards make sure a later
    ``group_send`` does not queue messages for them either way.
    """
    if layer is None:
        return
    for departure in departures:
        conn = departure.connection
        # Each step on its own: a failed send must not keep it in its groups.
        await send_close(layer, conn.channel_name, code, reason)
        for group in conn.groups:
            try:
                await layer.group_discard(group, conn.channel_name)
            except Exception as exc:
                logger.warning("Could not discard %s from %r: %r", conn.channel_name, group, exc)


async def depart(
    layer: Any, departures: tuple[Departure, ...], reason: str, code: int | None = None
) -> None:
    """Close connections removed from the store, then announce their departures."""
    await close_departed(layer, departures, close_code(reason) if code is None else code, reason)
    for departure in departures:
        await events.departed(departure, reason=reason)


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
        self.state = State.NEW
        #: Whether the store holds this connection (it may not, after a store error).
        self.recorded = False
        self._connecting: asyncio.Future[ConnectResult] | None = None

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
        meta = check_metadata(meta)
        if self.state is not State.NEW:
            raise NotConnected(f"{self!r} was already connected once.")
        conf = get_settings()
        self.channel_layer = channel_layer
        self.channel_name = channel_name
        self.groups = checked
        self.meta = meta
        if self.tracked:
            admission = await self._record(conf.ON_STORE_ERROR, conf.REJECT_CODE)
            if not admission.accepted:
                self.state = State.CLOSED
                return admission
        self.state = State.CONNECTED
        for group in checked:
            await channel_layer.group_add(group, channel_name)
        return Admission(True)

    async def _record(self, on_store_error: str, reject_code: int) -> Admission:
        # Shielded: if this task is cancelled while the script runs, cleanup
        # waits for the store's answer and then removes what it wrote.
        self._connecting = asyncio.ensure_future(
            self.store.aconnect(self.snapshot(), session_policy())
        )
        try:
            result = await asyncio.shield(self._connecting)
        except asyncio.CancelledError:
            self.state = State.CONNECTED
            raise
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            if on_store_error == "reject":
                return Admission(False, 1011)
            # Proceed untracked; the heartbeat records it, under the session
            # policy, once the store is back.
            self.state = State.CONNECTED
            get_heartbeat().add(self)
            return Admission(True)
        store_failures.succeeded()
        if not result.accepted:
            return Admission(False, reject_code)
        # Live from here on, before any other await: a cancellation now must
        # still find something to clean up.
        self.state = State.CONNECTED
        get_heartbeat().add(self)
        await self._recorded(result)
        return Admission(True)

    async def _recorded(self, result: ConnectResult) -> None:
        self.recorded = True
        self.connected_at = result.connected_at or time.time()
        # The evicted are told to close before any receiver of the new
        # connection's events runs.
        await close_departed(
            self.channel_layer, result.evicted, close_code("superseded"), "superseded"
        )
        await events.connected(self, result)
        for departure in result.evicted:
            await events.departed(departure, reason="superseded")

    async def arecover(self) -> None:
        """Record a connection admitted while the store was down.

        It goes through the session policy like any connect: it may close the
        user's older connections, or, under ``reject_new``, be closed itself
        with ``REJECT_CODE``.
        """
        if self.state is not State.CONNECTED or self.recorded or not self.tracked:
            return
        try:
            result = await self.store.aconnect(self.snapshot(), session_policy())
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return
        store_failures.succeeded()
        if result.accepted:
            await self._recorded(result)
        elif self.channel_layer is not None and self.channel_name is not None:
            await send_close(
                self.channel_layer, self.channel_name, close_code("rejected"), "rejected"
            )

    async def ajoin(self, groups: Any) -> tuple[str, ...]:
        """Join more groups; returns the groups that were new for this connection."""
        checked = validate_group_names(groups)
        if not self._require_connected():
            return ()
        new = tuple(g for g in checked if g not in self.groups)
        if not new:
            return ()
        self.groups = self.groups + new
        assert self.channel_name is not None
        for group in new:
            await self.channel_layer.group_add(group, self.channel_name)
        if self.tracked and self.recorded:
            try:
                joined = await self.store.ajoin(self.channel_name, new)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
            else:
                store_failures.succeeded()
                await events.joined(self, joined)
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
                left = await self.store.aleave(self.channel_name, gone)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
            else:
                store_failures.succeeded()
                await events.left(self, left)
        for group in gone:
            await self.channel_layer.group_discard(group, self.channel_name)
        return gone

    async def aset_meta(self, meta: Any) -> None:
        """Replace this connection's metadata (a small JSON object, or None)."""
        checked = check_metadata(meta)
        if not self._require_connected():
            return
        self.meta = checked
        if self.tracked and self.recorded:
            assert self.channel_name is not None
            try:
                await self.store.aset_meta(self.channel_name, checked)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
            else:
                store_failures.succeeded()

    async def adisconnect(self) -> Departure | None:
        """Remove the connection from the store and its layer groups; idempotent."""
        if self.state is not State.CONNECTED:
            self.state = State.CLOSED
            return None
        self.state = State.CLOSED
        get_heartbeat().discard(self)
        departure: Departure | None = None
        if self.tracked:
            assert self.channel_name is not None
            if self._connecting is not None and not self._connecting.done():
                # A cancelled connect: let its script land before removing it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._connecting)
            try:
                # Shielded: a cancelled disconnect must still reach the store.
                departure = await asyncio.shield(self.store.adisconnect(self.channel_name))
            except StoreUnavailable as exc:
                # The entry expires by itself within TTL.
                store_failures.failed(exc)
            else:
                store_failures.succeeded()
        self.recorded = False
        if self.channel_layer is not None and self.channel_name is not None:
            for group in self.groups:
                try:
                    await self.channel_layer.group_discard(group, self.channel_name)
                except Exception as exc:  # cleanup goes on for the rest
                    logger.warning("group_discard(%r) failed on close: %s", group, exc)
        if departure is not None:
            await events.departed(departure, reason="disconnected")
        return departure

    def _require_connected(self) -> bool:
        """True while connected; False once closed (a late client command is
        not an error: the socket is going); raises before the connect."""
        if self.state is State.NEW:
            raise NotConnected(
                "This connection is not connected yet; presence groups and metadata can "
                "change only between connect and disconnect."
            )
        return self.state is State.CONNECTED

    def restored(self) -> None:
        """The heartbeat wrote this connection back into the store."""
        self.recorded = True
