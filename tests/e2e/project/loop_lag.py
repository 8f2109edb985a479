"""How late the server's event loop runs a short timer: its worst stall.

A task sleeps :data:`INTERVAL` seconds again and again and keeps the largest
overshoot. It starts on the first request to ``/loop-lag/`` (uvicorn runs
with ``--lifespan off``, so there is no startup hook), one per event loop.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

#: Seconds between samples: a stall shorter than this may go unseen.
INTERVAL = 0.02


class LoopLag:
    """The worst lag seen since the last reset, sampled every INTERVAL."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.max_lag = 0.0
        self.samples = 0
        self.task = loop.create_task(self._run(), name="e2e-loop-lag")

    async def _run(self) -> None:
        while True:
            start = self.loop.time()
            await asyncio.sleep(INTERVAL)
            lag = self.loop.time() - start - INTERVAL
            self.samples += 1
            if lag > self.max_lag:
                self.max_lag = lag

    def read(self, *, reset: bool) -> dict[str, Any]:
        """The figures so far; ``reset`` starts a new measurement."""
        figures = {"max_lag": self.max_lag, "samples": self.samples, "interval": INTERVAL}
        if reset:
            self.max_lag, self.samples = 0.0, 0
        return figures


_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = (
    weakref.WeakKeyDictionary()
)


def monitor() -> LoopLag:
    """The running loop's monitor, started on first use."""
    loop = asyncio.get_running_loop()
    lag = _monitors.get(loop)
    if lag is None:
        lag = _monitors[loop] = LoopLag(loop)
    return lag
