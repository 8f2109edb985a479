"""Turning store results into signals.

Whoever changes the store reports the change: the process whose connect
recorded a connection sends ``connection_opened``; whoever removed an entry
(its own disconnect, an eviction, ``disconnect_user`` or the sweep of an
expired entry) sends ``connection_closed``. Each store write is atomic, so
each event is sent exactly once across all processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.dispatch import Signal

from . import signals
from .logs import logger
from .stores.base import ConnectResult, Departure

if TYPE_CHECKING:
    from .tracker import PresenceTracker


async def send(signal: Signal, **kwargs: Any) -> None:
    """Send a signal from async code; a failing receiver is logged, never raised."""
    if not signal.receivers:
        return
    try:
        if hasattr(signal, "asend"):
            results = await signal.asend_robust(sender=signals.PRESENCE, **kwargs)
        else:  # Django 4.2
            results = await sync_to_async(signal.send_robust)(sender=signals.PRESENCE, **kwargs)
    except Exception:
        logger.exception("Sending a presence signal failed")
        return
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error("Presence signal receiver %r raised %r", receiver, result, exc_info=result)


async def connected(tracker: PresenceTracker, result: ConnectResult) -> None:
    conn = tracker.snapshot()
    await send(signals.connection_opened, connection=conn)
    if tracker.user is None:
        return
    if result.came_online:
        await send(signals.user_online, user=tracker.user)
    for group in result.user_joined:
        await send(signals.user_joined_group, user=tracker.user, group=group)


async def joined(
    tracker: PresenceTracker, groups: tuple[str, ...], user_joined: tuple[str, ...]
) -> None:
    if tracker.user is None:
        return
    for group in user_joined:
        await send(signals.user_joined_group, user=tracker.user, group=group)


async def left(
    tracker: PresenceTracker, groups: tuple[str, ...], user_left: tuple[str, ...]
) -> None:
    if tracker.user is None:
        return
    for group in user_left:
        await send(signals.user_left_group, user=tracker.user, group=group)


async def departed(departure: Departure, *, reason: str) -> None:
    conn = departure.connection
    await send(signals.connection_closed, connection=conn, reason=reason)
    if conn.user is None:
        return
    for group in departure.user_left:
        await send(signals.user_left_group, user=conn.user, group=group)
    if departure.went_offline:
        await send(signals.user_offline, user=conn.user)
