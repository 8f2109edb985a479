"""PresenceMiddleware: a plain ASGI middleware for websocket scopes.

It identifies the connection (the user's pk from ``scope["user"]``, the
Django session key from ``scope["session"]``), puts a
:class:`~channels_presence.tracker.PresenceTracker` in ``scope["presence"]``
for :class:`~channels_presence.consumers.PresenceConsumerMixin`, and removes
the connection from presence when the inner application ends for any reason,
an exception in the consumer included. Other scope types pass straight
through.

Place it inside ``AuthMiddlewareStack``::

    AuthMiddlewareStack(PresenceMiddleware(URLRouter(websocket_urlpatterns)))
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .conf import get_settings
from .exceptions import MissingAuthScope
from .logs import logger
from .tracker import PresenceTracker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def tracker_for_scope(scope: Scope) -> PresenceTracker:
    """A tracker for the user and session of a websocket scope."""
    if "user" not in scope:
        raise MissingAuthScope(
            "PresenceMiddleware found no scope['user']. Wrap it in AuthMiddlewareStack: "
            "AuthMiddlewareStack(PresenceMiddleware(URLRouter(...)))."
        )
    user = scope["user"]
    authenticated = bool(getattr(user, "is_authenticated", False))
    pk = getattr(user, "pk", None) if authenticated else None
    session = scope.get("session")
    session_key = getattr(session, "session_key", None) if session is not None else None
    if pk is not None:
        return PresenceTracker(user=str(pk), session=session_key, tracked=True)
    track_anonymous = get_settings().ANONYMOUS == "track"
    return PresenceTracker(user=None, session=session_key, tracked=track_anonymous)


class PresenceMiddleware:
    """Tracks websocket connections for presence; passes other scopes through."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.inner(scope, receive, send)
            return
        tracker = tracker_for_scope(scope)
        # A copy, so the caller's scope is never changed.
        scope = dict(scope, presence=tracker)

        # Watched so the heartbeat knows when the socket ended: an application
        # that does not finish after that is dropped from presence (STUCK_AFTER).
        async def watched_receive() -> Message:
            message = await receive()
            if message.get("type") == "websocket.disconnect":
                tracker.ended()
            return message

        async def watched_send(message: Message) -> None:
            if message.get("type") in _ENDING:
                tracker.ended()
            await send(message)

        try:
            await self.inner(scope, watched_receive, watched_send)
        finally:
            await _cleanup(tracker)


# Messages an application sends to end its socket (a close, or a refused handshake).
_ENDING = frozenset({"websocket.close", "websocket.http.response.start"})


async def _cleanup(tracker: PresenceTracker) -> None:
    # Shielded: a cancelled connection task must still leave no ghost behind.
    try:
        await asyncio.shield(tracker.adisconnect())
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("Presence cleanup failed for %r", tracker)
