"""The presence consumer: PresenceConsumerMixin with the shared client protocol."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from channels_presence.consumers import PresenceConsumerMixin

from .plain_consumers import RoomCommands


class RoomConsumer(PresenceConsumerMixin, RoomCommands, AsyncJsonWebsocketConsumer):
    """Tracked in ``lobby``; joins and leaves other groups on the client's command.

    Before the mixin closes a superseded or disconnected socket, the client
    receives ``{"type": "closing", "reason": ..., "code": ...}``.
    """

    presence_groups = ["lobby"]

    async def connect(self) -> None:
        await super().connect()
        await self.send_json(self.hello())

    async def do_join(self, group: str) -> None:
        await self.presence_join(group)

    async def do_leave(self, group: str) -> None:
        await self.presence_leave(group)

    async def presence_closing(self, reason: str, code: int) -> None:
        await self.send_json({"type": "closing", "reason": reason, "code": code})
