"""Logging for store failures: one line when a failure burst starts, one when it ends."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("channels_presence")


class FailureBurst:
    """Log the first failure of a burst and the recovery, not every message in between."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        """Record a failure; only the first of a burst is logged."""
        with self._lock:
            self.failures += 1
            first = self.failures == 1
        if first:
            logger.error(
                "%s failed: %s. Presence is degraded until it recovers; "
                "further failures are not logged one by one.",
                self.what,
                exc,
            )

    def succeeded(self) -> None:
        """Record a success; logs the recovery if a burst was under way."""
        if not self.failures:
            return
        with self._lock:
            count, self.failures = self.failures, 0
        if count:
            logger.warning("%s recovered after %d failed operation(s).", self.what, count)


store_failures = FailureBurst("The presence store")
