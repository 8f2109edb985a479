"""Sending a close through the layer: a failure is logged and never stops the caller."""

from __future__ import annotations

import logging
from typing import Any

from channels.layers import InMemoryChannelLayer

from channels_presence.closing import close_departed, send_close
from channels_presence.stores.base import Connection, Departure


async def full_inbox() -> tuple[InMemoryChannelLayer, str]:
    """A layer and a channel whose inbox is full: the next send raises ChannelFull."""
    layer = InMemoryChannelLayer(capacity=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "filler"})
    return layer, channel


async def test_a_close_the_layer_refuses_is_logged_and_reported(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="channels_presence")
    layer, channel = await full_inbox()
    assert await send_close(layer, channel, 4001, "superseded") is False
    assert caplog.messages == [
        f"Could not close {channel} through the channel layer: ChannelFull({channel!r})"
    ]
    other = await layer.new_channel()
    assert await send_close(layer, other, 4001, "superseded") is True
    assert await layer.receive(other) == {
        "type": "presence.close",
        "code": 4001,
        "reason": "superseded",
    }


async def test_a_refused_close_still_takes_the_connection_out_of_its_groups(caplog: Any) -> None:
    layer, channel = await full_inbox()
    for group in ("a", "b"):
        await layer.group_add(group, channel)
    gone = Departure(Connection(channel, user="1", session=None, groups=("a", "b")))

    await close_departed(layer, (gone,), 4001, "superseded")

    assert all(channel not in layer.groups.get(g, {}) for g in ("a", "b"))
