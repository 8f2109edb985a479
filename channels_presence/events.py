"""Turning store results into signals and presence diffs.

Whoever changes the store reports the change: the process whose connect
recorded a connection sends ``connection_opened`` (and ``user_online`` /
``user_joined_group`` when the store says they are new); whoever removed an
entry (its own disconnect, an eviction, ``disconnect_user`` or the sweep of an
expired entry) sends ``connection_closed``. Each store write is atomic, so
each of these is sent once across all processes.

"Left" and "offline" wait for ``LEAVE_GRACE``: the store keeps them pending, a
user who is back in time cancels them, and the due ones are claimed by a timer
in the process that saw the departure or, should that process die, by any
process's next heartbeat. A claim is atomic, so each is announced once.

Presence diffs (for consumers with ``presence_diffs = True``) gather the
user-level joins and leaves of each group and send at most one
``presence.diff`` message per group per ``DIFF_INTERVAL`` from each process.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import math
from typing import Any

from asgiref.sync import sync_to_async
from django.dispatch import Signal

from . import listeners, signals
from .closing import close_code, close_departed
from .conf import get_settings
from .exceptions import StoreUnavailable
from .logs import logger, store_failures
from .loops import PerLoop
from .names import sorted_pks
from .stores import get_store
from .stores.base import Absence, Connection, ConnectResult, Departure

#: The channel-layer message type of a presence diff.
DIFF_MESSAGE_TYPE = "presence.diff"
#: Set by PresenceConsumerMixin when a consumer class opts in to diffs.
diffs_wanted = False


async def send(signal: Signal, **kwargs: Any) -> None:
    """Send a signal from async code; a failing receiver is logged, never raised."""
    if not signal.receivers:
        return
    try:
        if hasattr(signal, "asend_robust"):
            results = await signal.asend_robust(sender=signals.PRESENCE, **kwargs)
        else:
            results = await _send_robust_42(signal, **kwargs)
    except Exception:
        logger.exception("Sending a presence signal failed")
        return
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error("Presence signal receiver %r raised %r", receiver, result, exc_info=result)


async def _send_robust_42(signal: Signal, **kwargs: Any) -> list[tuple[Any, Any]]:
    """``asend_robust`` for Django 4.2, whose signals cannot await a receiver."""
    results: list[tuple[Any, Any]] = []
    # Django 4.2 returns one list here (5.0+ splits sync and async receivers).
    receivers: Any = signal._live_receivers(signals.PRESENCE)
    for receiver in receivers:
        try:
            if inspect.iscoroutinefunction(receiver):
                result = await receiver(signal=signal, sender=signals.PRESENCE, **kwargs)
            else:
                result = await sync_to_async(receiver)(
                    signal=signal, sender=signals.PRESENCE, **kwargs
                )
        except Exception as exc:
            result = exc
        results.append((receiver, result))
    return results


# What the tracker, the API and the heartbeat report --------------------------------


async def connected(connection: Connection, result: ConnectResult) -> None:
    """A connection was recorded."""
    await send(signals.connection_opened, connection=connection)
    if connection.user is None:
        return
    if result.came_online:
        await send(signals.user_online, user=connection.user)
    await _joined(connection.user, result.user_joined)


async def joined(user: str | None, user_joined: tuple[str, ...]) -> None:
    """A recorded connection joined groups; ``user_joined`` are new for its user."""
    if user is not None:
        await _joined(user, user_joined)


async def left(user: str | None, user_left: tuple[str, ...]) -> None:
    """A recorded connection left groups; ``user_left`` were its user's last there."""
    if user is not None:
        await _departing(user, user_left, offline=False)


async def departed(departure: Departure, *, reason: str) -> None:
    """A connection was removed from the store, by this process."""
    conn = departure.connection
    await send(signals.connection_closed, connection=conn, reason=reason)
    if conn.user is not None:
        await _departing(conn.user, departure.user_left, offline=departure.went_offline)


async def depart(
    layer: Any, departures: tuple[Departure, ...], reason: str, code: int | None = None
) -> None:
    """Close connections removed from the store, then announce their departures."""
    await close_departed(layer, departures, close_code(reason) if code is None else code, reason)
    for departure in departures:
        await departed(departure, reason=reason)


async def settled(absences: tuple[Absence, ...]) -> None:
    """Departures whose grace ran out: announce them."""
    for absence in absences:
        if absence.group is None:
            await send(signals.user_offline, user=absence.user)
        else:
            await send(signals.user_left_group, user=absence.user, group=absence.group)
            _diffs().note(absence.group, absence.user, joined=False)


async def _joined(user: str, groups: tuple[str, ...]) -> None:
    for group in groups:
        await send(signals.user_joined_group, user=user, group=group)
        _diffs().note(group, user, joined=True)


async def _departing(user: str, groups: tuple[str, ...], *, offline: bool) -> None:
    if not groups and not offline:
        return
    grace = get_settings().LEAVE_GRACE
    if grace > 0:
        # The store holds them pending; claim them once the grace is over.
        _settler().schedule(grace)
        return
    await settled(
        tuple(Absence(user, g) for g in groups) + ((Absence(user, None),) if offline else ())
    )


# The grace timer ----------------------------------------------------------------------


#: Due departures are claimed on ticks of this many seconds, so a burst of
#: departures costs one settle round trip per tick, not one each.
SETTLE_TICK = 0.25


class Settler:
    """Claims due departures shortly after their grace ends, one timer per loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: list[float] = []
        self.handle: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def schedule(self, delay: float) -> None:
        # A little late on purpose (the store's clock must see the grace over),
        # and rounded up to a tick that every departure due around then shares.
        at = math.ceil((self.loop.time() + delay + 0.05) / SETTLE_TICK) * SETTLE_TICK
        if at in self.due:
            return
        heapq.heappush(self.due, at)
        if self.handle is None or self.handle.when() > at:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        while self.due and self.due[0] <= now:
            heapq.heappop(self.due)
        task = self.loop.create_task(self._settle())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if self.due:
            self.handle = self.loop.call_at(self.due[0], self._fire)

    async def _settle(self) -> None:
        try:
            absences = await get_store().asettle()
        except StoreUnavailable as exc:
            # Still pending in the store: a later heartbeat claims them.
            store_failures.failed(exc)
            return
        store_failures.succeeded()
        await settled(absences)


# Presence diffs -----------------------------------------------------------------------


class Diffs:
    """Gathers each group's joins and leaves and sends them together."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[str, dict[str, bool]] = {}
        self.handle: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def note(self, group: str, user: str, *, joined: bool) -> None:
        if not diffs_wanted:
            return
        changes = self.pending.setdefault(group, {})
        if changes.get(user) is (not joined):
            # Joined and left (or the reverse) within one interval: nothing to tell.
            del changes[user]
        else:
            changes[user] = joined
        if self.handle is None:
            self.handle = self.loop.call_later(get_settings().DIFF_INTERVAL, self._fire)

    def _fire(self) -> None:
        self.handle = None
        pending, self.pending = self.pending, {}
        task = self.loop.create_task(self.flush(pending))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def flush(self, pending: dict[str, dict[str, bool]]) -> None:
        for group, changes in pending.items():
            if not changes:
                continue
            message = {
                "type": DIFF_MESSAGE_TYPE,
                "group": group,
                "joins": sorted_pks(u for u, j in changes.items() if j),
                "leaves": sorted_pks(u for u, j in changes.items() if not j),
            }
            try:
                await listeners.agroup_send(group, message)
            except Exception as exc:  # a lost diff must not break the loop
                logger.warning("Could not send the presence diff of %r: %s", group, exc)


_settlers: PerLoop[Settler] = PerLoop(Settler)
_diff_buffers: PerLoop[Diffs] = PerLoop(Diffs)


def _settler() -> Settler:
    return _settlers.get()


def _diffs() -> Diffs:
    return _diff_buffers.get()


async def flush() -> None:
    """Send this loop's gathered diffs now.

    For short-lived loops (the sync API twins run on one each), whose timers
    would never fire. Pending departures stay in the store, where any
    server's heartbeat claims them.
    """
    diffs = _diff_buffers.values.get(asyncio.get_running_loop())
    if diffs is None or not diffs.pending:
        return
    if diffs.handle is not None:
        diffs.handle.cancel()
        diffs.handle = None
    pending, diffs.pending = diffs.pending, {}
    await diffs.flush(pending)
