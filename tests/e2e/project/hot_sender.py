"""A hot sender inside a server process: a task that sends to a group on every tick.

Started and read through ``/hot-sender/`` (see :mod:`.views`). Each tick calls
``agroup_send`` with the server's default ``max_age`` (``LISTENERS_MAX_AGE``)
and counts what it did, so a test in another process can tell how many
messages reached the channel layer and when the last one did.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from channels_presence import agroup_send


@dataclass
class Figures:
    """What one sender did so far."""

    group: str
    checks: int = 0
    sent: int = 0
    #: ``time.time()`` of the first and the latest tick that called the layer.
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    started_at: float = 0.0


class HotSender:
    """Sends ``{"type": "room.message", "text": <tick>}`` every ``interval`` seconds."""

    def __init__(self, group: str, interval: float) -> None:
        self.figures = Figures(group, started_at=time.time())
        self.interval = interval
        self.task = asyncio.get_running_loop().create_task(self._run(), name="e2e-hot-sender")

    async def _run(self) -> None:
        figures = self.figures
        while True:
            figures.checks += 1
            text = str(figures.checks)
            if await agroup_send(figures.group, {"type": "room.message", "text": text}):
                figures.sent += 1
                figures.last_sent_at = time.time()
                figures.first_sent_at = figures.first_sent_at or figures.last_sent_at
            await asyncio.sleep(self.interval)

    def read(self) -> dict[str, Any]:
        return asdict(self.figures)


_senders: dict[str, HotSender] = {}


def start(group: str, interval: float) -> dict[str, Any]:
    """Start a sender for ``group`` (replacing any earlier one) on the running loop."""
    stop(group)
    sender = _senders[group] = HotSender(group, interval)
    return sender.read()


def read(group: str) -> dict[str, Any]:
    """The figures of ``group``'s sender."""
    return _senders[group].read()


def stop(group: str) -> dict[str, Any] | None:
    """Cancel ``group``'s sender; its last figures, or None if there was none."""
    sender = _senders.pop(group, None)
    if sender is None:
        return None
    sender.task.cancel()
    return sender.read()
