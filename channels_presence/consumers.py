"""PresenceConsumerMixin: presence for websocket consumers.

Put it first among the bases::

    class RoomConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
        presence_groups = ["lobby"]

On connect the mixin records the connection, applies the session policy and
joins ``presence_groups`` in both the channel layer and the population, all
before the consumer's own ``connect()`` runs. A connection refused by the
policy is accepted and at once closed with ``REJECT_CODE`` (or 1011 when the
store is down under ``ON_STORE_ERROR="reject"``), so the client sees the code;
the consumer's ``connect()`` never runs for it.

On disconnect the mixin removes the connection before the consumer's own
``disconnect()`` runs, so populations read there no longer count it.

When a newer connection supersedes this one (or ``disconnect_user`` is
called), a ``presence.close`` message arrives through the channel layer; the
mixin calls :meth:`presence_closing` (send the client a last message there)
and closes the socket with the code it carries.

Works with ``AsyncWebsocketConsumer``, ``AsyncJsonWebsocketConsumer``,
``WebsocketConsumer`` and ``JsonWebsocketConsumer``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import Awaitable, Iterable
from typing import Any, ClassVar

from asgiref.sync import async_to_sync
from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from django.core.exceptions import ImproperlyConfigured

from . import events
from .closing import CLOSE_MESSAGE_TYPE
from .conf import get_settings
from .events import DIFF_MESSAGE_TYPE
from .logs import is_outage, layer_failures, logger
from .names import validate_group_names
from .tracker import PresenceTracker, State

_MIXIN_HANDLERS = {CLOSE_MESSAGE_TYPE: "presence_close", DIFF_MESSAGE_TYPE: "_presence_diff"}
# Close codes a presence.close message may carry.
_ALLOWED_CLOSE = {1000, 1001, 1011, 1012, 1013}


#: Seconds between tries to read from a failing channel layer: from the first
#: to the last, doubling, each with jitter so consumers do not retry in step.
OUTAGE_RETRY_FIRST = 0.1
OUTAGE_RETRY_LAST = 5.0


async def _receive_through_outages(receive: Any, consumer: PresenceConsumerMixin) -> Any:
    """``receive()`` from the channel layer, waiting out an outage of its server.

    Without this, a restart of the layer's Redis ends every consumer (and so
    closes every socket). One line is logged when an outage starts and one
    when it ends. From the first failure on, the heartbeat puts every local
    connection back into its layer groups at each beat until that succeeds
    (a restarted server forgot them; a reconnected read does not tell when
    it is back, and waits for a message that only a group could bring).

    A cancellation ends this at once, whatever the layer's read does with it:
    channels_redis over redis-py can swallow the cancellation of a read and
    block again, which would hold the consumer (and its presence) forever.
    """
    delay = OUTAGE_RETRY_FIRST
    failed = False
    while True:
        read = asyncio.ensure_future(receive())
        try:
            message = await asyncio.shield(read)
        except asyncio.CancelledError:
            abandon_read(read)
            raise
        except Exception as exc:
            if not is_outage(exc) or _cancelling():
                raise
            layer_failures.failed(exc)
            if not failed:
                consumer.presence.layer_failed()
            failed = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, OUTAGE_RETRY_LAST)
            continue
        if failed:
            layer_failures.succeeded()
        return message


def _cancelling() -> bool:
    # Task.cancelling() is Python 3.11+; before it, a cancel always raises.
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling and cancelling())


#: Seconds between cancels of a layer read that did not end when cancelled.
ABANDONED_READ_RECANCEL = 1.0
_abandoned: set[asyncio.Task[None]] = set()


def abandon_read(read: asyncio.Future[Any]) -> None:
    """Cancel a layer read nobody waits for any more, again until it ends."""
    if read.done():
        if not read.cancelled():
            read.exception()  # retrieved: a dying consumer's read may fail
        return
    read.cancel()
    task = asyncio.get_running_loop().create_task(_cancel_until_done(read))
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


async def _cancel_until_done(read: asyncio.Future[Any]) -> None:
    while not read.done():
        await asyncio.wait([read], timeout=ABANDONED_READ_RECANCEL)
        if not read.done():
            read.cancel()
    if not read.cancelled():
        read.exception()


class PresenceConsumerMixin:
    """Presence tracking for a websocket consumer. List it before the consumer base."""

    #: Groups every connection of this consumer joins on connect.
    presence_groups: ClassVar[Iterable[str]] = ()
    #: Receive ``presence.diff`` messages (who joined and left) in :meth:`presence_diff`.
    presence_diffs: ClassVar[bool] = False

    # Set by channels' consumer machinery.
    scope: dict[str, Any]
    channel_layer: Any
    channel_name: str
    _sync: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, AsyncConsumer):
            return  # another mixin built on this one; checked when it meets a consumer
        if not issubclass(cls, (AsyncWebsocketConsumer, WebsocketConsumer)):
            raise ImproperlyConfigured(
                f"{cls.__qualname__}: PresenceConsumerMixin works with websocket consumers "
                "(AsyncWebsocketConsumer, AsyncJsonWebsocketConsumer, WebsocketConsumer, "
                "JsonWebsocketConsumer)."
            )
        mro = cls.__mro__
        if mro.index(PresenceConsumerMixin) > mro.index(AsyncConsumer):
            base = next(b for b in mro if b.__module__.startswith("channels."))
            raise ImproperlyConfigured(
                f"{cls.__qualname__}: list PresenceConsumerMixin before the consumer base, "
                f"e.g. class {cls.__name__}(PresenceConsumerMixin, {base.__name__})."
            )
        groups = cls.__dict__.get("presence_groups")
        if groups is not None:
            validate_group_names(groups)
        if cls.presence_diffs:
            events.diffs_wanted = True

    # Configuration hooks ------------------------------------------------------

    def get_presence_groups(self) -> Iterable[str]:
        """The groups to join on connect; by default ``presence_groups``.

        Runs before the consumer's ``connect()``. In a sync consumer it runs in
        a worker thread (the ORM is fine); in an async one it may be ``async def``.
        """
        return self.presence_groups

    def get_presence_meta(self) -> dict[str, Any] | None:
        """Metadata to attach to this connection on connect (a small JSON object).

        Runs like :meth:`get_presence_groups`.
        """
        return None

    async def presence_closing(self, reason: str, code: int) -> None:
        """Called before presence closes this socket; send a last message here.

        ``reason`` is ``"superseded"`` (the user connected elsewhere),
        ``"kicked"`` (``disconnect_user``), ``"logged_out"`` (the session logged
        out, ``DISCONNECT_ON_LOGOUT``), ``"expired"``, or ``"rejected"`` (let in
        while the store was down, then over the limit under ``reject_new``).
        The default sends nothing. In a sync consumer this may be a plain method.
        """

    async def presence_diff(self, message: dict[str, Any]) -> None:
        """Who joined and left one of this connection's groups (``presence_diffs = True``).

        ``message`` is ``{"type": "presence.diff", "group": ..., "joins": [pks],
        "leaves": [pks]}``, gathered over ``DIFF_INTERVAL``. Override to
        forward it to the browser; the default does nothing. In a sync
        consumer this may be a plain method.
        """

    async def _presence_diff(self, message: dict[str, Any]) -> None:
        if not self.presence_diffs or message.get("group") not in self.presence.groups:
            return
        await self._presence_hook(self.presence_diff, message)

    # The tracker --------------------------------------------------------------

    @property
    def presence(self) -> PresenceTracker:
        """This connection's presence, put in the scope by PresenceMiddleware."""
        try:
            tracker: PresenceTracker = self.scope["presence"]
        except KeyError:
            raise ImproperlyConfigured(
                f"{type(self).__qualname__} uses PresenceConsumerMixin, but the scope has no "
                "'presence'. Wrap the websocket router in PresenceMiddleware: "
                "AuthMiddlewareStack(PresenceMiddleware(URLRouter(...)))."
            ) from None
        return tracker

    def presence_join(self, *groups: str) -> Any:
        """Join more presence groups (layer and population).

        Await it in an async consumer; in a sync consumer it runs at once.
        Returns the groups that were new for this connection.
        """
        return self._presence_call(self.presence.ajoin(groups))

    def presence_leave(self, *groups: str) -> Any:
        """Leave presence groups (layer and population); awaitable as above."""
        return self._presence_call(self.presence.aleave(groups))

    def presence_set_meta(self, meta: dict[str, Any] | None) -> Any:
        """Replace this connection's metadata; awaitable as above."""
        return self._presence_call(self.presence.aset_meta(meta))

    def _presence_call(self, coro: Awaitable[Any]) -> Any:
        if self._sync:

            async def run() -> Any:
                return await coro

            return async_to_sync(run)()
        return coro

    # Channels plumbing --------------------------------------------------------

    # channels sets ``channel_receive`` in AsyncConsumer.__call__; the mixin
    # wraps it so a channel-layer outage does not end the consumer.
    @property
    def channel_receive(self) -> Any:
        return self._presence_channel_receive

    @channel_receive.setter
    def channel_receive(self, receive: Any) -> None:
        self._presence_channel_receive = functools.partial(_receive_through_outages, receive, self)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # A sync consumer's base_send is a sync wrapper; closing from the loop
        # needs the raw ASGI send.
        self._presence_send = send
        self._presence_closed_socket = False
        await super().__call__(scope, receive, send)  # type: ignore[misc]

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Route presence messages here; everything else to the consumer."""
        try:
            await self._presence_dispatch(message)
        except BaseException:
            # The consumer is ending (an exception, StopConsumer, a cancel):
            # should its cleanup hang, the heartbeat drops it (STUCK_AFTER).
            self.presence.ended()
            raise

    async def _presence_dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.connect":
            if await self._presence_connect():
                await super().dispatch(message)  # type: ignore[misc]
            return
        if kind == "websocket.disconnect":
            # Counted out first, so the consumer's disconnect() reads the new state.
            await self.presence.adisconnect()
            await super().dispatch(message)  # type: ignore[misc]
            return
        if isinstance(kind, str) and kind in _MIXIN_HANDLERS:
            await getattr(self, _MIXIN_HANDLERS[kind])(message)
            return
        if isinstance(kind, str) and kind.startswith("presence."):
            name = kind.replace(".", "_")
            # The mixin's own methods (presence_join, presence_leave...) are not
            # message handlers; a message must never call them.
            if hasattr(PresenceConsumerMixin, name) or not hasattr(self, name):
                logger.warning("Ignored a presence message of unknown type %r", kind)
                return
            # A handler of the consumer's own: channels runs it as usual.
        await super().dispatch(message)  # type: ignore[misc]

    async def _presence_connect(self) -> bool:
        tracker = self.presence
        if self.channel_layer is None:
            raise ImproperlyConfigured(
                "PresenceConsumerMixin needs a channel layer: set CHANNEL_LAYERS, e.g. "
                "{'default': {'BACKEND': 'channels.layers.InMemoryChannelLayer'}}."
            )
        groups = await self._presence_hook(self.get_presence_groups)
        meta = await self._presence_hook(self.get_presence_meta)
        tracker.closer = self._presence_force_close
        admission = await tracker.aconnect(self.channel_layer, self.channel_name, groups, meta)
        if admission.accepted:
            return True
        await self._presence_send({"type": "websocket.accept"})
        await self._presence_send({"type": "websocket.close", "code": admission.close_code})
        raise StopConsumer()

    async def _presence_hook(self, hook: Any, *args: Any) -> Any:
        """Run a hook the way the consumer runs its own code.

        ``async def`` hooks are awaited; plain ones run in a worker thread in
        a sync consumer (so they may use the ORM) and inline in an async one.
        """
        if inspect.iscoroutinefunction(hook):
            return await hook(*args)
        if self._sync:
            return await database_sync_to_async(hook)(*args)
        result = hook(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _presence_force_close(self, code: int) -> None:
        """Close the socket now, without the layer (the heartbeat's last resort)."""
        await self.presence.adisconnect()
        await self._presence_close_socket(code)

    async def _presence_close_socket(self, code: int) -> None:
        # Once: a forced close and the presence.close handler it overtook (its
        # presence_closing() ran long) both end here, and an ASGI server
        # raises on a second close.
        if not self._presence_closed_socket:
            self._presence_closed_socket = True
            await self._presence_send({"type": "websocket.close", "code": code})

    async def presence_close(self, message: dict[str, Any]) -> None:
        """Handle ``presence.close``: last word to the client, then close the socket.

        Only the server can send this: it travels on the channel layer, never
        from a client frame.
        """
        tracker = self.presence
        if tracker.state is not State.CONNECTED:
            return
        code = message.get("code")
        if (
            not isinstance(code, int)
            or isinstance(code, bool)
            or not (code in _ALLOWED_CLOSE or 3000 <= code <= 4999)
        ):
            code = get_settings().CLOSE_CODE
        reason = message.get("reason")
        reason = reason if isinstance(reason, str) else "superseded"
        try:
            await self._presence_hook(self.presence_closing, reason, code)
        except Exception:
            logger.exception("presence_closing() raised; closing the socket anyway")
        await tracker.adisconnect()
        await self._presence_close_socket(code)
