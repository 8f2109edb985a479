"""Security properties: only the server closes connections, users stay apart,
and the mixin's defaults never show a browser a session key or channel name."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.urls import path

import channels_presence as presence
from channels_presence.consumers import PresenceConsumerMixin
from channels_presence.middleware import PresenceMiddleware

pytestmark = pytest.mark.usefixtures("backend")


class DefaultsConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Every presence hook left at its default; diffs on."""

    presence_groups = ["defaults"]
    presence_diffs = True

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content.get("leave"):
            await self.presence_leave("defaults")
        if "meta" in content:
            await self.presence_set_meta(content["meta"])
        await self.send_json({"ok": True})


APP = PresenceMiddleware(URLRouter([path("ws/", DefaultsConsumer.as_asgi())]))


async def frames_until_close(comm: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        out = await comm.receive_output(timeout=2)
        frames.append(out)
        if out["type"] == "websocket.close":
            return frames


async def test_client_frames_cannot_close_or_evict_anyone(ws: Any) -> None:
    victim = await ws(user=2)
    attacker = await ws(user=1)
    channel = (await presence.auser_channels(2))[0]
    for forged in (
        {"type": "presence.close", "code": 4001},
        {"type": "presence.close", "channel": channel},
        {"type": "websocket.close"},
        {"type": "presence.diff", "group": "lobby", "joins": [], "leaves": [2]},
    ):
        await attacker.send_json_to(forged)
        assert await attacker.receive_json_from() == {"echo": forged}
    await victim.send_json_to({"still": "here"})
    assert await victim.receive_json_from() == {"echo": {"still": "here"}}
    assert await presence.agroup_members("lobby") == [1, 2]


async def test_a_users_presence_calls_touch_only_their_own_connection(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(DIFF_INTERVAL=0.05, LEAVE_GRACE=0)
    alice = await ws("/ws/", user=1, app=APP)
    await ws("/ws/", user=2, app=APP)
    await alice.send_json_to({"meta": {"name": "mallory"}, "leave": True})
    frames = []
    while True:  # diffs may arrive around the reply
        out = json.loads((await alice.receive_output(timeout=2))["text"])
        frames.append(out)
        if out == {"ok": True}:
            break
    assert await presence.agroup_members("defaults") == [2]
    (bob,) = (await presence.agroup_connections("defaults"))[2]
    assert bob.meta is None


async def test_superseded_default_consumer_sends_only_the_close_code(ws: Any) -> None:
    first = await ws("/ws/", user=5, app=APP, session="secret-session-key")
    await ws("/ws/", user=5, app=APP, session="other-session-key")
    frames = await frames_until_close(first)
    texts = " ".join(f.get("text") or "" for f in frames)
    assert frames[-1] == {"type": "websocket.close", "code": 4001}
    assert "session" not in texts and "specific." not in texts and "!" not in texts


async def test_rejected_connection_gets_only_a_close_code(ws: Any, presence_settings: Any) -> None:
    presence_settings(ON_LIMIT="reject_new")
    await ws("/ws/", user=5, app=APP, session="s-1")
    refused = await ws("/ws/", user=5, app=APP, session="s-2")
    assert await frames_until_close(refused) == [{"type": "websocket.close", "code": 4003}]


async def test_presence_close_with_a_hostile_code_falls_back_to_close_code(ws: Any) -> None:
    comm = await ws(user=1)
    channel = (await presence.auser_channels(1))[0]
    await get_channel_layer().send(channel, {"type": "presence.close", "code": 1006})
    frames = await frames_until_close(comm)
    assert frames[-1] == {"type": "websocket.close", "code": 4001}


@pytest.mark.parametrize("pk", [uuid.UUID(int=7), "user:with:colons", "ü-ñ", 2**70])
async def test_unusual_primary_keys_are_tracked_by_their_string(ws: Any, pk: Any) -> None:
    await ws(user=pk)
    assert await presence.agroup_user_count("lobby") == 1
    assert await presence.ais_online(pk)
    assert await presence.ais_online(str(pk))
    await ws(user=pk)
    assert await presence.agroup_size("lobby") == 1
