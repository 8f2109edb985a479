"""A websocket consumer without presence: checks the harness before the package exists."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings


class RoomCommands:
    """The client protocol shared by the plain and the presence consumer.

    On connect the server sends ``{"type": "hello", "channel": ..., "user": ...,
    "session": ..., "server": ...}``. The client may then send
    ``{"echo": x}``, ``{"join": group}`` or ``{"leave": group}``; each gets
    one reply. ``room.message`` events from the channel layer are forwarded
    as ``{"type": "message", "text": ...}``.
    """

    scope: dict[str, Any]
    channel_name: str

    # Provided by AsyncJsonWebsocketConsumer, which comes later in the MRO.
    send_json: Any

    def hello(self) -> dict[str, Any]:
        user = self.scope.get("user")
        session = self.scope.get("session")
        return {
            "type": "hello",
            "server": settings.SERVER_NAME,
            "channel": self.channel_name,
            "user": user.pk if user is not None and user.is_authenticated else None,
            "session": getattr(session, "session_key", None),
        }

    async def do_join(self, group: str) -> None:
        raise NotImplementedError("a consumer says how it joins a group")

    async def do_leave(self, group: str) -> None:
        raise NotImplementedError("a consumer says how it leaves a group")

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if "echo" in content:
            await self.send_json({"type": "echo", "echo": content["echo"]})
        elif "join" in content:
            await self.do_join(content["join"])
            await self.send_json({"type": "joined", "group": content["join"]})
        elif "leave" in content:
            await self.do_leave(content["leave"])
            await self.send_json({"type": "left", "group": content["leave"]})
        else:
            await self.send_json({"type": "error", "error": f"unknown command {content!r}"})

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "message", "text": event.get("text", "")})


class PlainConsumer(RoomCommands, AsyncJsonWebsocketConsumer):
    """Echo and channel-layer groups, nothing from channels_presence."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json(self.hello())

    async def do_join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)

    async def do_leave(self, group: str) -> None:
        await self.channel_layer.group_discard(group, self.channel_name)
