"""Logging for store and channel-layer failures: one line when a failure burst
starts, one when it ends; and what counts as an outage of the layer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

logger = logging.getLogger("channels_presence")


class FailureBurst:
    """Log the first failure of a burst and the recovery, not every message in between."""

    def __init__(self, what: str) -> None:
        self.what = what
        #: Failures in the burst under way (0 when none is).
        self.failures = 0
        #: ``time.monotonic()`` of the latest failure.
        self.last_failure = 0.0
        #: Failures since the process started (the metrics export it).
        self.total = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        """Record a failure; only the first of a burst is logged."""
        with self._lock:
            self.failures += 1
            self.last_failure = time.monotonic()
            self.total += 1
            first = self.failures == 1
        if first:
            logger.error(
                "%s failed: %s. Presence is degraded until it recovers; "
                "further failures are not logged one by one.",
                self.what,
                exc,
            )

    def failing(self, within: float) -> bool:
        """Whether a burst is under way whose latest failure is under ``within`` s old."""
        return bool(self.failures) and time.monotonic() - self.last_failure < within

    def succeeded(self) -> None:
        """Record a success; logs the recovery if a burst was under way."""
        if not self.failures:
            return
        with self._lock:
            count, self.failures = self.failures, 0
        if count:
            logger.warning("%s recovered after %d failed operation(s).", self.what, count)


store_failures = FailureBurst("The presence store")
layer_failures = FailureBurst("The channel layer")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the layer's server is unreachable (worth a retry)."""
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return True
    # The layer's client library (redis-py for channels_redis) has its own
    # ConnectionError and TimeoutError, which need not derive from OSError.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "TimeoutError"})
