"""Per-event-loop singletons that let go of loops once they are closed.

The heartbeat, the grace timer and the diff buffer each belong to one event
loop. The sync API twins run on short-lived loops of their own (through
``async_to_sync``), so a registry keyed by loop must drop closed loops, or it
would keep every one of them alive: the values hold tasks and timers, which
hold their loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``T`` per running event loop, made on first use."""

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self.factory = factory
        self.values: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        """The running loop's value."""
        loop = asyncio.get_running_loop()
        value = self.values.get(loop)
        if value is None:
            for closed in [lp for lp in self.values if lp.is_closed()]:
                del self.values[closed]
            value = self.values[loop] = self.factory(loop)
        return value
