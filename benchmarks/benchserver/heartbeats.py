"""Counts the presence heartbeats of the server process, for ``churn.py``.

``churn.py`` shows how many heartbeats fell inside each measured window, so a
reader can see the figures include them. The count is kept in this process
and read over HTTP (``GET /heartbeats/``): nothing extra reaches Redis, whose
commands ``round_trips.py`` counts.
"""

from __future__ import annotations

import functools
from typing import Any

from django.http import HttpRequest, JsonResponse

from channels_presence.heartbeat import Heartbeat

beats = 0


def count_heartbeats() -> None:
    """Count every ``Heartbeat.beat`` of this process from now on (once)."""
    original = Heartbeat.beat
    if getattr(original, "counted", False):
        return

    @functools.wraps(original)
    async def beat(self: Heartbeat) -> Any:
        global beats
        beats += 1
        return await original(self)

    beat.counted = True  # type: ignore[attr-defined]
    Heartbeat.beat = beat  # type: ignore[method-assign]


def heartbeats_view(request: HttpRequest) -> JsonResponse:
    """``{"heartbeats": n}``: the beats this process has started."""
    return JsonResponse({"heartbeats": beats})
