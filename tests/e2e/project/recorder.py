"""Records every presence signal a server sends, for tests in another process.

With ``E2E_RECORD_EVENTS=1`` the ASGI module connects one receiver per
signal of :mod:`channels_presence.signals`. Each appends a JSON line
(``signal``, ``server``, ``pid``, ``at``, ``user``, ``group``, ``reason``,
``channel``) to the Redis list ``settings.EVENTS_KEY`` on the channel-layer
Redis, so the presence Redis can be restarted without losing the record. The
receivers are coroutine functions: they run on the event loop that sends the
signal, and the push is done before the signal's sender moves on.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import weakref
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from channels_presence import signals

SIGNALS = (
    "user_online",
    "user_offline",
    "user_joined_group",
    "user_left_group",
    "connection_opened",
    "connection_closed",
)

# redis.asyncio connections belong to the loop that opened them.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def _client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aioredis.Redis.from_url(settings.LAYER_REDIS_URL)
    return client


def _receiver(name: str) -> Any:
    async def record(sender: Any, **kwargs: Any) -> None:
        connection = kwargs.get("connection")
        entry = {
            "signal": name,
            "server": settings.SERVER_NAME,
            "pid": os.getpid(),
            "at": time.time(),
            "user": kwargs.get("user", getattr(connection, "user", None)),
            "group": kwargs.get("group"),
            "reason": kwargs.get("reason"),
            "channel": getattr(connection, "channel_name", None),
        }
        await _client().rpush(settings.EVENTS_KEY, json.dumps(entry))

    record.__name__ = f"record_{name}"
    return record


def connect_receivers() -> None:
    """Connect the recording receivers (idempotent)."""
    for name in SIGNALS:
        getattr(signals, name).connect(_receiver(name), weak=False, dispatch_uid=f"e2e-{name}")
