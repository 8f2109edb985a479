"""Closing connections: the message, the codes, and sending a close through the layer.

Shared by everything that closes a connection presence removed: the
tracker (evictions on connect), the heartbeat (notices of removals whose
close message was lost, nodes counted out) and the API (``disconnect_user``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .conf import get_settings
from .logs import logger
from .stores.base import Departure

#: The channel-layer message type that closes a connection.
CLOSE_MESSAGE_TYPE = "presence.close"

#: Sent to a connection counted out after missing its heartbeats ("going away"):
#: its client should reconnect, not believe it signed in elsewhere.
EXPIRED_CLOSE_CODE = 1001


#: Seconds one channel-layer call made by presence may take. A layer whose
#: server hangs (paused, or its packets dropped) and whose client has no
#: socket timeout of its own would otherwise hold a heartbeat past TTL, or a
#: socket's cleanup for good.
LAYER_TIMEOUT = 5.0

#: ``asyncio.timeout`` (Python 3.11+): a connect's group adds go through
#: ``layer_call``, and ``wait_for`` costs each a task of its own (about 12 us
#: against 4 us a call, measured on Python 3.11).
_timeout: Any = getattr(asyncio, "timeout", None)

#: Until when (``time.monotonic()``) presence's layer calls fail at once: one
#: timed out, and each would wait as long again.
_layer_hung_until = 0.0


async def layer_call(method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Make one channel-layer call for presence, within ``LAYER_TIMEOUT``.

    Raises ``asyncio.TimeoutError`` (an outage, to ``is_outage``) when the
    layer did not answer in time, and then at once for the next
    ``LAYER_TIMEOUT`` seconds: a beat's closes, or a batch of departures,
    cost one timeout together, not one each.
    """
    global _layer_hung_until
    if time.monotonic() < _layer_hung_until:
        raise asyncio.TimeoutError(
            "the channel layer did not answer a moment ago; not asked again yet"
        )
    try:
        if _timeout is not None:
            async with _timeout(LAYER_TIMEOUT):
                return await method(*args)
        return await asyncio.wait_for(method(*args), LAYER_TIMEOUT)
    except asyncio.TimeoutError:
        _layer_hung_until = time.monotonic() + LAYER_TIMEOUT
        raise


def close_message(code: int, reason: str) -> dict[str, Any]:
    """The channel-layer message that asks a presence consumer to close."""
    return {"type": CLOSE_MESSAGE_TYPE, "code": code, "reason": reason}


def close_code(reason: str) -> int:
    """The close code presence sends a connection it closes for ``reason``."""
    conf = get_settings()
    codes = {
        "expired": EXPIRED_CLOSE_CODE,
        "logged_out": conf.LOGOUT_CODE,
        "rejected": conf.REJECT_CODE,
    }
    return codes.get(reason, conf.CLOSE_CODE)


async def send_close(layer: Any, channel: str, code: int, reason: str) -> bool:
    """Ask one connection to close; a layer failure is logged, never raised.

    A full inbox (ChannelFull) is likely exactly when the target is stuck,
    and must not stop the caller's connect, disconnect or heartbeat. Returns
    whether the message was handed to the layer.
    """
    try:
        await layer_call(layer.send, channel, close_message(code, reason))
    except Exception as exc:
        logger.warning("Could not close %s through the channel layer: %r", channel, exc)
        return False
    return True


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
                await layer_call(layer.group_discard, group, conn.channel_name)
            except Exception as exc:
                logger.warning("Could not discard %s from %r: %r", conn.channel_name, group, exc)
