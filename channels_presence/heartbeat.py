"""One heartbeat per event loop: keeps the loop's connections alive in one small call.

Each event loop that serves presence connections is a *node*: it has a
:class:`Heartbeat` with a random node id, and every connection it holds gets
an id ``"<node>.<seq>"``. Every ``HEARTBEAT`` seconds the heartbeat moves the
node's deadline in the store: one write, however many connections the node
holds, and no Python work per connection either. The same call hands back:

* local connections that someone else removed (a newer login, ``disconnect_user``,
  a logout) whose close message may have been lost: they are closed here;
* connections of dead nodes, removed in a bounded batch: they are taken out of
  their channel-layer groups and announced (another beat follows at once while
  any are left);
* departures whose leave grace ran out: they are announced;
* that the store lost the node (flushed, restarted empty, failed over to a
  replica that missed the last writes): every local connection is written
  back, in batches; so they are after a join, leave or metadata write of
  this node failed;
* that the node was counted out (this loop stalled past ``TTL``): every local
  connection is closed with 1001 and the loop starts again as a new node;
* which of a slice of its connections (``AUDIT_BATCH`` a beat, in turn) the
  store holds only in part (a key evicted or deleted on its own): what was
  lost is put back.

When another node's deadline is due before the next beat, the heartbeat wakes
then, so a dead node's connections stop counting soon after its ``TTL``. When
a store call fails (a beat, or a connection's own write), the next beat comes
within ``RETRY`` seconds, and again every ``RETRY`` until the store answers:
what the store missed is written back about a second after it is back.

The task outlives the loop's last connection by ``TTL + LEAVE_GRACE`` (so a
crashed peer's connections are still removed and announced), then retires
the node.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import secrets
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer

from . import events, listeners
from .closing import EXPIRED_CLOSE_CODE, close_code, send_close
from .conf import get_settings
from .exceptions import StoreUnavailable
from .logs import logger, store_failures
from .loops import PerLoop
from .stores import get_store, session_policy
from .stores.base import AUDIT_BATCH, Connection, RefreshResult, RestoreResult

if TYPE_CHECKING:
    from .tracker import PresenceTracker

_NODE_ALPHABET = string.ascii_letters + string.digits
_SEQ_DIGITS = string.digits + string.ascii_lowercase
#: Trackers snapshotted per write-back call; the loop runs other work between them.
RESTORE_CHUNK = 1000
#: A heartbeat that left work over (dead nodes to remove) beats again after this.
AGAIN = 0.01
#: Wake this long after another node's deadline, so the store sees it passed.
LATE = 0.05
#: A socket asked to close through the layer that is still open this much
#: later (its consumer is stuck, or the message was lost) is closed directly.
FORCE_CLOSE_AFTER = 2.0
#: A connection whose socket ended (or whose consumer raised) and whose
#: application has still not finished this long after is dropped from presence
#: by the next heartbeat: its cleanup is stuck. Above channels_redis's 5 s
#: blocking read, which a closing consumer may wait out.
STUCK_AFTER = 10.0
#: Local connections taken back into their layer groups per step, after a
#: channel-layer outage (the loop runs other work between steps).
REGROUP_CHUNK = 500
#: A beat the store did not answer is tried again after this many seconds (at
#: most ``HEARTBEAT``, less a random part of up to half, so that nodes cut off
#: together come back spread out): once the store is back (a Sentinel failover
#: done, a restart), what it lost is written back within about a second.
RETRY = 1.0
#: Called with the seconds each beat took (``metrics.py`` adds one when enabled).
beat_observers: list[Callable[[float], None]] = []


def new_node_id() -> str:
    """A random node id: 8 letters or digits (47 bits)."""
    return "".join(secrets.choice(_NODE_ALPHABET) for _ in range(8))


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = _SEQ_DIGITS[d] + digits
        if not n:
            return digits


class Heartbeat:
    """The node of one event loop: its connections and its refresh loop."""

    def __init__(self) -> None:
        self.node = new_node_id()
        self._seq = itertools.count(1)
        #: Local connections by connection id.
        self.trackers: dict[str, PresenceTracker] = {}
        #: Those admitted while the store was down: recorded once it is back.
        self.unrecorded: dict[str, PresenceTracker] = {}
        #: Connections refused while the store failed, whose write may still
        #: land there: removed once the store answers.
        self.orphans: dict[str, Connection] = {}
        #: Those of them that were announced as connected: their removal is announced.
        self._announced_orphans: set[str] = set()
        #: Open sockets presence does not track (anonymous ones under
        #: ``ANONYMOUS="ignore"``): only their layer groups are kept here.
        self.layer_only: dict[str, PresenceTracker] = {}
        #: The channel layer came back from an outage: its groups need us again.
        self.regroup = False
        #: A write of a recorded connection (a join, a leave, metadata) failed:
        #: the store may differ from this node until it is written back whole.
        self.resync = False
        #: Set when a store call of this loop failed: the next beat comes soon.
        self._hurry: asyncio.Event | None = None
        #: Connections whose socket ended but which are still counted.
        self._ending: dict[str, PresenceTracker] = {}
        #: Connection ids in the order the store audits them (closed ones are
        #: dropped as they come up).
        self._audit: collections.deque[str] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.trackers)

    def new_conn_id(self) -> str:
        """A connection id no other connection has: ``"<node>.<seq>"``."""
        return f"{self.node}.{_base36(next(self._seq))}"

    def add(self, tracker: PresenceTracker) -> None:
        """Keep ``tracker`` alive from now on; starts the loop's task if needed."""
        self.trackers[tracker.conn_id] = tracker
        self._audit.append(tracker.conn_id)
        if tracker.ended_at is not None:  # its socket ended while it connected
            self._ending[tracker.conn_id] = tracker
        self._start()
        if not tracker.recorded:
            self.unrecorded[tracker.conn_id] = tracker
            self.hurry()

    def add_layer_only(self, tracker: PresenceTracker) -> None:
        """Put ``tracker``'s socket back into its layer groups after an outage,
        though presence does not track it."""
        self.layer_only[tracker.conn_id] = tracker

    def layer_failed(self) -> None:
        """The channel layer failed: put sockets back into its groups from the
        next beat on, until that succeeds (its server may have lost them)."""
        self.regroup = True
        self._start()

    def forget(self, connection: Connection, *, announce: bool = False) -> None:
        """Remove ``connection`` from the store as soon as it answers again.

        For a connect that was refused, or a disconnect that failed, because
        the store did not answer in time: its write may still be queued in a
        paused Redis, or the record is still there. ``announce``: the
        connection was announced, so its departure is too, once removed.
        """
        self.orphans[connection.conn_id] = connection
        if announce:
            self._announced_orphans.add(connection.conn_id)
        self._start()
        self.hurry()

    def missed_write(self) -> None:
        """A join, leave or metadata write of a recorded connection failed:
        once the store answers, write this node's connections back whole."""
        self.resync = True
        self._start()
        self.hurry()

    def hurry(self) -> None:
        """A store call of this loop failed: beat within ``RETRY`` seconds, not
        ``HEARTBEAT``, so the store learns what it missed soon after it is back."""
        if self._hurry is not None:
            self._hurry.set()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._hurry = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="channels-presence-heartbeat"
            )

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less when :meth:`hurry` is called meanwhile."""
        hurry = self._hurry
        if hurry is None or delay <= RETRY:
            await asyncio.sleep(delay)
            return
        # Set already when a call failed during the last beat: that counts too.
        try:
            await asyncio.wait_for(hurry.wait(), delay - RETRY)
        except asyncio.TimeoutError:
            await asyncio.sleep(RETRY)
        else:
            await asyncio.sleep(RETRY * (1 - random.random() / 2))

    def recorded(self, tracker: PresenceTracker) -> None:
        """``tracker`` is in the store now."""
        self.unrecorded.pop(tracker.conn_id, None)

    def discard(self, tracker: PresenceTracker) -> None:
        """Stop keeping ``tracker`` alive."""
        self.trackers.pop(tracker.conn_id, None)
        self.unrecorded.pop(tracker.conn_id, None)
        self._ending.pop(tracker.conn_id, None)
        self.layer_only.pop(tracker.conn_id, None)

    def ending(self, tracker: PresenceTracker) -> None:
        """``tracker``'s socket ended: its application should finish soon."""
        if tracker.conn_id in self.trackers:
            self._ending[tracker.conn_id] = tracker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        delay = get_settings().HEARTBEAT
        while True:
            conf = get_settings()
            await self._sleep(delay)
            if self.trackers or self.orphans or (self.regroup and self.layer_only):
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since > conf.TTL + conf.LEAVE_GRACE + conf.HEARTBEAT:
                self._task = None
                await self._retire()
                return
            delay = conf.HEARTBEAT
            if self._hurry is not None:
                self._hurry.clear()  # this beat answers the failures so far
            try:
                result = await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a beat meets
                logger.exception("Presence heartbeat failed")
                continue
            if result is None:
                delay = min(delay, RETRY) * (1 - random.random() / 2)
            else:
                if result.more:
                    delay = AGAIN
                elif result.next_check is not None:
                    delay = min(delay, result.next_check + LATE)

    async def _retire(self) -> None:
        # Should it fail, the node's deadline passes and another node removes it.
        with contextlib.suppress(StoreUnavailable):
            await get_store().aretire(self.node)

    async def beat(self) -> RefreshResult | None:
        """Refresh this node now; returns what the store said."""
        started = time.perf_counter()
        try:
            return await self._beat()
        finally:
            for observe in beat_observers:
                observe(time.perf_counter() - started)

    async def _beat(self) -> RefreshResult | None:
        try:
            result = await get_store().arefresh(self.node, self._audit_slice())
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return None
        store_failures.succeeded()
        if result.counted_out:
            await self.counted_out()
            return result
        # Orphans first: a reset below would remove their records quietly, and
        # their departures (announced connections) would never be announced.
        if self.orphans:
            await self._remove_orphans()
        restored = bool(result.lost or self.resync)
        if restored:
            self.resync = False
            await self._restore(skip=frozenset(result.closed))
        # Those removed by others are closed below, never put back; after a
        # write-back of the whole node, the audit's findings are stale.
        broken = tuple(c for c in result.broken if c not in result.close_reasons)
        if broken and not restored:
            await self._repair(broken)
        if self.regroup:
            await self._regroup()
        # What the store removed and claimed exists nowhere else now: report it first.
        if result.expired:
            # Their processes are gone (nobody else will discard them), or so
            # stalled that they are counted out and must reconnect.
            await events.depart(self._layer(), result.expired, "expired")
        if result.settled:
            await events.settled(result.settled)
        for conn_id in result.closed:
            closing = self.trackers.get(conn_id)
            if closing is not None:
                reason = result.close_reasons.get(conn_id) or "superseded"
                await self._close(closing, reason, result.close_codes.get(conn_id))
        for tracker in list(self.unrecorded.values()):
            refused = await tracker.arecover()
            if refused is not None:
                await self._close(tracker, refused, None)
        await self._drop_stuck()
        return result

    async def _drop_stuck(self) -> None:
        """Drop connections whose application did not finish ``STUCK_AFTER``
        seconds after their socket ended: presence must not keep them alive."""
        now = time.monotonic()
        for tracker in list(self._ending.values()):
            if tracker.ended_at is None or now - tracker.ended_at < STUCK_AFTER:
                continue
            logger.warning(
                "Dropped %s from presence: its application had not finished %.0f s after "
                "its socket ended (a cleanup that hangs).",
                tracker.channel_name,
                STUCK_AFTER,
            )
            # The socket may still wait for the application (a handshake): end it.
            with contextlib.suppress(Exception):
                await tracker.force_close(1011)
            try:
                await tracker.adisconnect()
            except Exception:  # the next beat tries again
                logger.exception("Could not drop %r from presence", tracker)

    def _layer(self) -> Any:
        # A lingering heartbeat has no local connection to borrow a layer from.
        layer = next((t.channel_layer for t in self.trackers.values() if t.channel_layer), None)
        return layer or get_channel_layer()

    async def _close(self, tracker: PresenceTracker, reason: str, code: int | None) -> None:
        """Close a local connection the store no longer holds.

        Through the channel layer first, so the consumer says its last word in
        ``presence_closing``; should the socket still be open
        ``FORCE_CLOSE_AFTER`` seconds later (a full inbox, a stuck handler, a
        layer outage), this process closes it directly: it owns the socket.
        """
        tracker.recorded = False
        self.discard(tracker)
        code = close_code(reason) if code is None else code
        if tracker.channel_layer is not None and tracker.channel_name is not None:
            await send_close(tracker.channel_layer, tracker.channel_name, code, reason)
        task = asyncio.get_running_loop().create_task(self._force_close(tracker, code))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _force_close(self, tracker: PresenceTracker, code: int) -> None:
        await asyncio.sleep(FORCE_CLOSE_AFTER)
        if tracker.is_open():
            logger.warning(
                "Closing %s directly: it did not close within %.0f s of being asked.",
                tracker.channel_name,
                FORCE_CLOSE_AFTER,
            )
            await tracker.force_close(code)

    async def _close_refused(self, result: RestoreResult) -> None:
        """Close what a write-back refused: superseded meanwhile, or logged out."""
        for reason, refused in (("superseded", result.refused), ("logged_out", result.logged_out)):
            for conn_id in refused:
                tracker = self.trackers.get(conn_id)
                if tracker is not None:
                    await self._close(tracker, reason, None)

    def _audit_slice(self) -> tuple[Connection, ...]:
        """The next ``AUDIT_BATCH`` recorded local connections, in turn."""
        picked: list[Connection] = []
        for _ in range(len(self._audit)):
            if len(picked) >= AUDIT_BATCH:
                break
            conn_id = self._audit.popleft()
            tracker = self.trackers.get(conn_id)
            if tracker is None:
                continue  # closed: forgotten here too
            self._audit.append(conn_id)
            snapshot = tracker.snapshot() if tracker.recorded and tracker.tracked else None
            if snapshot is not None and snapshot.node == self.node:
                picked.append(snapshot)
        return tuple(picked)

    async def _repair(self, broken: tuple[str, ...]) -> None:
        """Put back what the store lost of local connections (a key evicted or
        deleted on its own); one that no longer fits its user's limit (a connect
        took its place meanwhile) is closed as superseded."""
        trackers = [self.trackers[c] for c in broken if c in self.trackers]
        if not trackers:
            return
        store = get_store()
        try:
            result = await store.arepair(tuple(t.snapshot() for t in trackers), session_policy())
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return
        logger.warning(
            "Presence heartbeat put back %d connection(s) whose keys the store lost "
            "(evicted or deleted).",
            len(trackers),
        )
        await self._close_refused(result)
        # Closed while the repair was in flight: its removal may have run first.
        for tracker in trackers:
            if (
                tracker.conn_id not in self.trackers
                and tracker.conn_id not in result.refused
                and tracker.conn_id not in self.orphans
            ):
                try:
                    await store.adisconnect(tracker.snapshot())
                except StoreUnavailable as exc:
                    store_failures.failed(exc)

    async def _remove_orphans(self) -> None:
        store = get_store()
        for conn_id, connection in list(self.orphans.items()):
            try:
                departure = await store.adisconnect(connection)
            except StoreUnavailable as exc:
                store_failures.failed(exc)
                return
            del self.orphans[conn_id]
            if conn_id in self._announced_orphans:
                self._announced_orphans.discard(conn_id)
                if departure is not None:
                    listeners.note_left(departure.connection.groups)
                    await events.departed(departure, reason="disconnected")

    async def _regroup(self) -> None:
        """Put every local connection back into its channel-layer groups.

        A channel layer on a Redis that restarted lost its groups: without
        this, sockets that survived the outage would never hear a group
        message again.
        """
        self.regroup = False
        trackers = [*self.trackers.values(), *self.layer_only.values()]
        for start in range(0, len(trackers), REGROUP_CHUNK):
            for tracker in trackers[start : start + REGROUP_CHUNK]:
                try:
                    try:
                        await tracker.rejoin_layer_groups()
                    except Exception:
                        # Once more: the first command after a restart may meet
                        # a pooled connection the old server closed.
                        await tracker.rejoin_layer_groups()
                except Exception as exc:  # the layer is failing again: next time
                    logger.warning("Could not put connections back into their groups: %r", exc)
                    self.regroup = True
                    return
            await asyncio.sleep(0)

    async def counted_out(self) -> None:
        """This node missed its heartbeats and the store removed its connections.

        Every local connection is closed with 1001 ("going away": reconnect),
        and the loop carries on as a new node.
        """
        stale = list(self.trackers.values())
        self.node = new_node_id()
        self._seq = itertools.count(1)
        if stale:
            logger.warning(
                "This process missed its presence heartbeats for longer than TTL and was "
                "counted out; closing its %d connection(s) so they reconnect.",
                len(stale),
            )
        for tracker in stale:
            await self._close(tracker, "expired", EXPIRED_CLOSE_CODE)

    async def _restore(self, skip: frozenset[str] = frozenset()) -> None:
        """Write every local connection back after the store lost this node.

        What the store still holds of the node goes first: after a restore
        from an older snapshot it may list sockets closed since. ``skip``:
        connections removed by others (this beat closes them), never put back.
        """
        store = get_store()
        try:
            await store.areset(self.node)
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            self.resync = True  # the next beat tries again, within RETRY
            self.hurry()
            return
        recorded = [t for t in self.trackers.values() if t.recorded and t.conn_id not in skip]
        restored = 0
        for start in range(0, len(recorded), RESTORE_CHUNK):
            chunk = recorded[start : start + RESTORE_CHUNK]
            try:
                result = await store.arestore(tuple(t.snapshot() for t in chunk), session_policy())
            except StoreUnavailable as exc:
                store_failures.failed(exc)
                self.resync = True  # the next beat (within RETRY) writes everything back
                self.hurry()
                return
            restored += result.restored
            await self._close_refused(result)
            # Closed while the batch was in flight: its removal ran first (an
            # orphan's removal is the orphans' own, announced).
            for tracker in chunk:
                if tracker.conn_id not in self.trackers and tracker.conn_id not in self.orphans:
                    try:
                        await store.adisconnect(tracker.snapshot())
                    except StoreUnavailable as exc:
                        store_failures.failed(exc)
        if restored:
            logger.info("Presence heartbeat wrote back %d missing connection(s).", restored)


_heartbeats: PerLoop[Heartbeat] = PerLoop(lambda loop: Heartbeat())


def get_heartbeat() -> Heartbeat:
    """The running event loop's heartbeat."""
    return _heartbeats.get()


def local_connections() -> int:
    """Connections this process keeps alive, over all its event loops."""
    return sum(len(heartbeat) for heartbeat in _heartbeats.snapshot())
