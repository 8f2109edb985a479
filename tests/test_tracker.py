"""PresenceTracker: the metadata bound, and what a disconnect leaves in the channel layer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.layers import get_channel_layer

import channels_presence as presence
from channels_presence import signals
from channels_presence.exceptions import InvalidMetadata, TooManyGroups
from channels_presence.tracker import PresenceTracker, check_metadata

pytestmark = pytest.mark.usefixtures("backend")

#: A small METADATA_MAX_BYTES, so the metadata at the bound is easy to build.
LIMIT = 64


def meta_of_size(size: int, text: str = "x") -> dict[str, Any]:
    """A JSON object of exactly ``size`` bytes as presence encodes it."""
    empty = len(json.dumps({"n": ""}, separators=(",", ":")))
    meta = {"n": text * ((size - empty) // len(json.dumps(text)[1:-1]))}
    assert len(json.dumps(meta, separators=(",", ":")).encode()) == size
    return meta


async def test_metadata_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(METADATA_MAX_BYTES=LIMIT, DIFF_INTERVAL=0.05)
    at_limit, over = meta_of_size(LIMIT), meta_of_size(LIMIT + 1)
    assert check_metadata(at_limit) == at_limit
    with pytest.raises(InvalidMetadata, match=f"is {LIMIT + 1} bytes as JSON.*allows {LIMIT}"):
        check_metadata(over)

    comm = await ws("/ws/diff/", user=7)
    await comm.receive_json_from()  # its own join diff
    await comm.send_json_to({"meta": at_limit})
    assert await comm.receive_json_from() == {"meta": "ok"}
    (conn,) = (await presence.agroup_connections("stage"))[7]
    assert conn.meta == at_limit

    await comm.send_json_to({"meta": over})
    assert "METADATA_MAX_BYTES allows 64" in (await comm.receive_json_from())["error"]
    (conn,) = (await presence.agroup_connections("stage"))[7]
    assert conn.meta == at_limit


def test_metadata_is_measured_in_bytes_of_its_compact_json(presence_settings: Any) -> None:
    # Escaped, a non-ASCII character takes 6 bytes ("\u00e9"): the bound counts those.
    presence_settings(METADATA_MAX_BYTES=LIMIT)
    accented = meta_of_size(LIMIT - 2, "\u00e9")
    assert check_metadata(accented) == accented
    with pytest.raises(InvalidMetadata):
        check_metadata(meta_of_size(LIMIT + 4, "\u00e9"))
    # No spaces after separators: {"a": 1, "b": 2} is counted as {"a":1,"b":2}.
    presence_settings(METADATA_MAX_BYTES=len('{"a":1,"b":2}'))
    assert check_metadata({"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_metadata_max_bytes_zero_allows_no_metadata_but_none(presence_settings: Any) -> None:
    presence_settings(METADATA_MAX_BYTES=0)
    assert check_metadata(None) is None
    with pytest.raises(InvalidMetadata, match="is 2 bytes"):
        check_metadata({})


async def test_a_disconnect_takes_the_channel_out_of_its_layer_groups(ws: Any) -> None:
    """Else the layer's group_send keeps queueing messages for the dead channel."""
    layer = get_channel_layer()
    comm = await ws(user=1)
    await comm.send_json_to({"join": "room-9"})
    assert await comm.receive_json_from() == {"joined": "room-9"}
    (channel,) = await presence.auser_channels(1)
    assert all(channel in layer.groups.get(g, {}) for g in ("lobby", "room-9"))

    await comm.disconnect()

    assert all(channel not in layer.groups.get(g, {}) for g in ("lobby", "room-9"))
    await layer.group_send("lobby", {"type": "chat.message", "text": "anyone?"})
    await layer.group_send("room-9", {"type": "chat.message", "text": "anyone?"})
    assert channel not in layer.channels  # nothing was queued for it


async def tracker_in(groups: list[str], user: str | None = "1") -> tuple[PresenceTracker, str]:
    """A connected tracker on the test layer, as the consumer mixin drives it."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    tracker = PresenceTracker(user=user, session=None, tracked=user is not None)
    assert (await tracker.aconnect(layer, channel, groups)).accepted
    return tracker, channel


async def test_joining_past_max_groups_per_connection_raises_before_anything_is_written(
    presence_settings: Any,
) -> None:
    presence_settings(MAX_GROUPS_PER_CONNECTION=2)
    tracker, channel = await tracker_in(["lobby"])
    assert await tracker.ajoin(["a"]) == ("a",)
    with pytest.raises(TooManyGroups, match=r"would be in 3 presence groups.*allows 2"):
        await tracker.ajoin(["a", "b"])
    assert tracker.groups == ("lobby", "a")
    assert await presence.agroups() == {"a": 1, "lobby": 1}
    assert channel not in get_channel_layer().groups.get("b", {})
    await tracker.adisconnect()


async def test_leaving_one_group_keeps_the_others_in_store_and_layer() -> None:
    layer = get_channel_layer()
    tracker, channel = await tracker_in(["lobby"])
    await tracker.ajoin(["a", "b"])
    assert await tracker.aleave(["a", "never-joined"]) == ("a",)
    assert tracker.groups == ("lobby", "b")
    assert await presence.agroups() == {"b": 1, "lobby": 1}
    assert [channel in layer.groups.get(g, {}) for g in ("lobby", "a", "b")] == [True, False, True]
    await tracker.adisconnect()
    assert all(channel not in layer.groups.get(g, {}) for g in ("lobby", "a", "b"))


async def test_an_untracked_connection_changes_layer_groups_only() -> None:
    layer = get_channel_layer()
    tracker, channel = await tracker_in(["lobby"], user=None)
    await tracker.ajoin(["a"])
    await tracker.aset_meta({"device": "phone"})
    assert channel in layer.groups["a"]
    assert await presence.agroups() == {}
    await tracker.aleave(["a"])
    assert channel not in layer.groups.get("a", {})
    assert await tracker.adisconnect() is None


async def test_a_disconnect_cancelled_half_way_still_ends_in_the_store_and_the_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server giving up on a slow application cancels its disconnect: the
    removal goes on (layer groups, the departure), and the middleware's second
    call waits for it."""
    layer = get_channel_layer()
    tracker, channel = await tracker_in(["lobby", "room"])
    closed: list[str] = []

    def on_closed(sender: Any, reason: str, **kwargs: Any) -> None:
        closed.append(reason)

    signals.connection_closed.connect(on_closed)
    entered, gate = asyncio.Event(), asyncio.Event()
    discard = layer.group_discard

    async def slow_discard(group: str, name: str) -> None:
        entered.set()
        await gate.wait()
        await discard(group, name)

    monkeypatch.setattr(layer, "group_discard", slow_discard)
    try:
        disconnecting = asyncio.ensure_future(tracker.adisconnect())
        await entered.wait()
        disconnecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await disconnecting
        assert await presence.agroups() == {}
        assert channel in layer.groups["room"]

        gate.set()
        assert await tracker.adisconnect() is None

        assert all(channel not in layer.groups.get(g, {}) for g in ("lobby", "room"))
        assert closed == ["disconnected"]
    finally:
        signals.connection_closed.disconnect(on_closed)
