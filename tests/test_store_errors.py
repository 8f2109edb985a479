"""An unreachable Redis: connections proceed or are refused, and the log stays readable."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import channels_presence as presence
from channels_presence.exceptions import StoreUnavailable
from channels_presence.heartbeat import get_heartbeat
from channels_presence.logs import store_failures
from tests.test_consumers import closed_with, still_open


def errors(caplog: Any) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "channels_presence" and r.levelno >= logging.ERROR
    ]


async def test_allow_lets_connections_in_untracked_with_one_log_line(
    ws: Any, dead_redis: None, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="channels_presence")
    comms = [await ws(user=pk) for pk in range(1, 6)]
    for comm in comms:
        await still_open(comm)
    await get_heartbeat().beat()
    lines = errors(caplog)
    assert len(lines) == 1, lines
    assert "unreachable" in lines[0] and "127.0.0.1" in lines[0]
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await presence.agroup_size("lobby")


async def test_reject_refuses_with_1011(ws: Any, dead_redis: None, presence_settings: Any) -> None:
    presence_settings(ON_STORE_ERROR="reject")
    comm = await ws(user=1)
    assert await closed_with(comm, 1011) == []


async def test_a_recovery_is_logged_once(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="channels_presence")
    store_failures.failures = 0
    for _ in range(3):
        store_failures.failed(OSError("down"))
    store_failures.succeeded()
    store_failures.succeeded()
    messages = [r.getMessage() for r in caplog.records if r.name == "channels_presence"]
    assert len(messages) == 2
    assert "recovered after 3 failed" in messages[1]
