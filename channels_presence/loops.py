"""Per-event-loop singletons that let go of loops once they are closed.

The heartbeat, the grace timer and the diff buffer each belong to one event
loop. The sync API twins run on short-lived loops of their own (through
``async_to_sync``), so a registry keyed by loop must drop closed loops, or it
would keep every one of them alive: the values hold tasks and timers, which
hold their loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``T`` per running event loop, made on first use."""

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self.factory = factory
        self.values: dict[asyncio.AbstractEventLoop, T] = {}
        # Loops of several threads (the sync twins' own) may ask at once.
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.values)

    def get(self) -> T:
        """The running loop's value."""
        loop = asyncio.get_running_loop()
        value = self.values.get(loop)
        if value is None:
            with self.lock:
                value = self.values.get(loop)
                if value is None:
                    for closed in [lp for lp in self.values if lp.is_closed()]:
                        del self.values[closed]
                    value = self.values[loop] = self.factory(loop)
        return value

    def pop_all(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Forget every loop's value; return them."""
        with self.lock:
            items = list(self.values.items())
            self.values.clear()
        return items

    def pop(self) -> T | None:
        """Forget the running loop's value; return it."""
        with self.lock:
            return self.values.pop(asyncio.get_running_loop(), None)
