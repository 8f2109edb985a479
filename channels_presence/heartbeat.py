"""One heartbeat per process: keeps every local connection alive in one call.

Each event loop that serves presence connections gets one :class:`Heartbeat`.
Every ``HEARTBEAT`` seconds it sends the store the snapshot of all of its
live connections in a single call (one Redis round trip however many there
are). The store answers with local connections that must close (evicted from
elsewhere while their close message was in flight) and with expired entries
of any process, which this process then takes out of their channel-layer
groups so ``group_send`` stops queueing messages for dead sockets.

The task runs only while the loop has connections, so nothing lingers after
the last socket closes (or after a test's event loop ends).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from .conf import get_settings
from .exceptions import StoreUnavailable
from .logs import logger, store_failures
from .stores import get_store

if TYPE_CHECKING:
    from .stores.base import RefreshResult
    from .tracker import PresenceTracker


#: Sent to a connection found alive after it had expired ("going away").
EXPIRED_CLOSE_CODE = 1001


class Heartbeat:
    """The refresh loop of one event loop's presence connections."""

    def __init__(self) -> None:
        self.trackers: dict[str, PresenceTracker] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.trackers)

    def add(self, tracker: PresenceTracker) -> None:
        """Start refreshing ``tracker``; starts the loop's task if needed."""
        assert tracker.channel_name is not None
        self.trackers[tracker.channel_name] = tracker
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="channels-presence-heartbeat"
            )

    def discard(self, tracker: PresenceTracker) -> None:
        """Stop refreshing ``tracker``."""
        if tracker.channel_name is not None:
            self.trackers.pop(tracker.channel_name, None)
        if not self.trackers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while self.trackers:
            await asyncio.sleep(get_settings().HEARTBEAT)
            if not self.trackers:
                return
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a beat meets
                logger.exception("Presence heartbeat failed")

    async def beat(self) -> RefreshResult | None:
        """Refresh every local connection now; returns what the store said."""
        from .tracker import close_departed, close_message

        everyone = [t for t in self.trackers.values() if t.channel_name is not None]
        trackers = [t for t in everyone if t.recorded]
        # Admitted while the store was down: they must pass the session policy.
        unrecorded = [t for t in everyone if not t.recorded]
        try:
            result = await get_store().arefresh(tuple(t.snapshot() for t in trackers))
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return None
        store_failures.succeeded()
        for tracker in trackers:
            tracker.restored()
        if result.restored:
            logger.info("Presence heartbeat wrote back %d missing connection(s).", result.restored)
        conf = get_settings()
        for channel in result.closed:
            closing = self.trackers.get(channel)
            if closing is None or closing.channel_layer is None:
                continue
            # Removed elsewhere: never refreshed nor recorded again from here.
            closing.recorded = False
            self.discard(closing)
            reason = result.close_reasons.get(channel, "superseded")
            if reason == "disconnected":
                continue  # it is on its way out already
            # A stalled process whose entries were swept must reconnect, not
            # tell its users they signed in elsewhere.
            code = EXPIRED_CLOSE_CODE if reason == "expired" else conf.CLOSE_CODE
            await closing.channel_layer.send(channel, close_message(code, reason))
        from . import events

        if result.expired:
            layer = next((t.channel_layer for t in trackers if t.channel_layer), None)
            # Their processes are gone (nobody else will discard them), or so
            # stalled that they are counted out: 1001 tells such a client to
            # reconnect, not that it was signed in elsewhere.
            await close_departed(layer, result.expired, EXPIRED_CLOSE_CODE, "expired")
            for departure in result.expired:
                await events.departed(departure, reason="expired")
        if result.settled:
            await events.settled(result.settled)
        # After the refresh, so the connections they may supersede are back in.
        for tracker in unrecorded:
            await tracker.arecover()
        return result


_heartbeats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeat] = (
    weakref.WeakKeyDictionary()
)


def get_heartbeat() -> Heartbeat:
    """The running event loop's heartbeat."""
    loop = asyncio.get_running_loop()
    heartbeat = _heartbeats.get(loop)
    if heartbeat is None:
        heartbeat = _heartbeats[loop] = Heartbeat()
    return heartbeat
