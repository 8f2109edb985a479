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
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer

from .conf import get_settings, session_policy
from .exceptions import StoreUnavailable
from .logs import logger, store_failures
from .loops import PerLoop
from .stores import get_store

if TYPE_CHECKING:
    from .stores.base import RefreshResult
    from .tracker import PresenceTracker


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

    async def _run(self) -> None:
        # The task outlives the last local connection by TTL + LEAVE_GRACE, so
        # entries that a crashed peer (or a failed disconnect) left behind are
        # still swept and announced when this process is the last one up.
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        while True:
            conf = get_settings()
            await asyncio.sleep(conf.HEARTBEAT)
            if self.trackers:
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since > conf.TTL + conf.LEAVE_GRACE + conf.HEARTBEAT:
                self._task = None
                return
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a beat meets
                logger.exception("Presence heartbeat failed")

    async def beat(self) -> RefreshResult | None:
        """Refresh every local connection now; returns what the store said."""
        from . import events
        from .tracker import depart

        everyone = [t for t in self.trackers.values() if t.channel_name is not None]
        trackers = [t for t in everyone if t.recorded]
        # Admitted while the store was down: they must pass the session policy.
        unrecorded = [t for t in everyone if not t.recorded]
        try:
            result = await get_store().arefresh(
                tuple(t.snapshot() for t in trackers), session_policy()
            )
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return None
        store_failures.succeeded()
        for tracker in trackers:
            tracker.restored()
        if result.restored:
            logger.info("Presence heartbeat wrote back %d missing connection(s).", result.restored)
        # What the store swept and claimed exists nowhere else now: report it first.
        if result.expired:
            # A lingering heartbeat has no local connection to borrow a layer from.
            layer = next((t.channel_layer for t in everyone if t.channel_layer), None)
            layer = layer or get_channel_layer()
            # Their processes are gone (nobody else will discard them), or so
            # stalled that they are counted out and must reconnect.
            await depart(layer, result.expired, "expired")
        if result.settled:
            await events.settled(result.settled)
        for channel in result.closed:
            closing = self.trackers.get(channel)
            if closing is not None:
                await self._close_removed(closing, result.close_reasons.get(channel, ""))
        # After the refresh, so the connections they may supersede are back in.
        for tracker in unrecorded:
            await tracker.arecover()
        return result

    async def _close_removed(self, tracker: PresenceTracker, why: str) -> None:
        """Close a local connection the store removed while its close message was lost."""
        from .tracker import close_code, send_close

        # Removed elsewhere: never refreshed nor recorded again from here.
        tracker.recorded = False
        self.discard(tracker)
        reason = why or "superseded"
        if reason == "disconnected" or tracker.channel_layer is None:
            return  # it is on its way out already
        assert tracker.channel_name is not None
        await send_close(tracker.channel_layer, tracker.channel_name, close_code(reason), reason)


_heartbeats: PerLoop[Heartbeat] = PerLoop(lambda loop: Heartbeat())


def get_heartbeat() -> Heartbeat:
    """The running event loop's heartbeat."""
    return _heartbeats.get()
