"""Per-event-loop singletons that let go of loops once they are closed.

The heartbeat, the grace timer and the diff buffer each belong to one event
loop. The sync API twins run on short-lived loops of their own (through
``async_to_sync``), so a registry keyed by loop must drop closed loops, or it
would keep every one of them alive: the values hold tasks and timers, which
hold their loop.

A value that holds sockets (a Redis client) must also be closed before its
loop is: once the loop is closed, nothing can close them cleanly. asyncio has
no "loop is ending" callback, but ``asyncio.run()``, ``asyncio.Runner`` and the
loops ``async_to_sync`` makes for the sync twins all close the loop's async
generators first, on the still running loop: :class:`AtLoopEnd` rides on that.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class AtLoopEnd:
    """Awaits ``close()`` on the running loop when that loop shuts down.

    Made inside a running loop. When the loop closes its async generators
    (``loop.shutdown_asyncgens()``, which ``asyncio.run()`` and
    ``asyncio.Runner`` call before closing it) ``close()`` runs there, unless
    :meth:`drop` was called first. A loop closed without that step runs nothing.
    """

    def __init__(self, close: Callable[[], Awaitable[None]]) -> None:
        self._close = close
        self._dropped = False
        self._gen = self._wait()
        # Run to the yield now: the loop's first-iteration hook registers the
        # generator, so the loop's shutdown will close it.
        with contextlib.suppress(StopIteration):
            self._gen.__anext__().send(None)

    async def _wait(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not self._dropped:
                await self._close()

    def drop(self) -> None:
        """Never run ``close()``; needs no loop (the generator ends at once)."""
        self._dropped = True
        # Already finished, or closing right now: nothing left to end.
        with contextlib.suppress(StopIteration, RuntimeError):
            self._gen.aclose().send(None)


class LoopEnding(RuntimeError):
    """A closable per-loop value was asked for after its loop's end closed it.

    Made again, it would hold sockets nothing could close any more (the
    loop's shutdown has already run its closing step).
    """


class PerLoop(Generic[T]):
    """One ``T`` per running event loop, made on first use.

    With ``close``, each value is closed on its loop when that loop shuts
    down (see :class:`AtLoopEnd`), unless it was popped first: whoever pops
    a value closes it.
    """

    def __init__(
        self,
        factory: Callable[[asyncio.AbstractEventLoop], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        self.factory = factory
        self.close = close
        self.values: dict[asyncio.AbstractEventLoop, T] = {}
        self._ends: dict[asyncio.AbstractEventLoop, AtLoopEnd] = {}
        #: Loops whose end closed their value: asking again is an error.
        self._ended: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        # Loops of several threads (the sync twins' own) may ask at once.
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.values)

    def get(self) -> T:
        """The running loop's value.

        Raises :class:`LoopEnding` for a closable value whose loop is shutting
        down and has closed it already: a task still running then (one
        started during the shutdown) must not open what nothing would close.
        """
        loop = asyncio.get_running_loop()
        value = self.values.get(loop)
        if value is None:
            with self.lock:
                value = self.values.get(loop)
                if value is None:
                    if loop in self._ended:
                        raise LoopEnding("this event loop is shutting down")
                    for closed in [lp for lp in self.values if lp.is_closed()]:
                        del self.values[closed]
                        self._drop_end(closed)
                    value = self.values[loop] = self.factory(loop)
                    if self.close is not None:
                        made = value
                        self._ends[loop] = AtLoopEnd(lambda: self._end(loop, made))
        return value

    async def _end(self, loop: asyncio.AbstractEventLoop, value: T) -> None:
        """At the loop's end: forget ``value`` (no later caller gets it, closed)
        and close it."""
        assert self.close is not None
        with self.lock:
            if self.values.get(loop) is value:
                del self.values[loop]
                self._ends.pop(loop, None)
            self._ended.add(loop)
        await self.close(value)

    def snapshot(self) -> list[T]:
        """The value of every loop not closed yet, read safely from any thread."""
        with self.lock:
            return [value for loop, value in self.values.items() if not loop.is_closed()]

    def _drop_end(self, loop: asyncio.AbstractEventLoop) -> None:
        end = self._ends.pop(loop, None)
        if end is not None:
            end.drop()

    def pop_all(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Forget every loop's value; return them (the caller closes them)."""
        with self.lock:
            items = list(self.values.items())
            self.values.clear()
            for loop, _ in items:
                self._drop_end(loop)
        return items

    def pop(self) -> T | None:
        """Forget the running loop's value; return it (the caller closes it)."""
        loop = asyncio.get_running_loop()
        with self.lock:
            self._drop_end(loop)
            return self.values.pop(loop, None)
