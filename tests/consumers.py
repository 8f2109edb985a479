"""Consumers the tests drive through PresenceMiddleware."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.generic.websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
)

from channels_presence import agroup_size
from channels_presence.consumers import PresenceConsumerMixin


class LobbyConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Joins "lobby"; client commands join/leave groups and read sizes."""

    presence_groups = ["lobby"]
    seen_in_disconnect: list[int] = []

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if "join" in content:
            await self.presence_join(content["join"])
            await self.send_json({"joined": content["join"]})
        elif "leave" in content:
            await self.presence_leave(content["leave"])
            await self.send_json({"left": content["leave"]})
        elif "size" in content:
            await self.send_json({"size": await agroup_size(content["size"])})
        elif "stall" in content:
            # A slow handler: messages for this consumer queue up behind it.
            await asyncio.sleep(content["stall"])
        else:
            await self.send_json({"echo": content})

    async def presence_closing(self, reason: str, code: int) -> None:
        await self.send_json({"type": "session.superseded", "reason": reason, "code": code})

    async def disconnect(self, code: int) -> None:
        type(self).seen_in_disconnect.append(await agroup_size("lobby"))

    async def chat_message(self, message: dict[str, Any]) -> None:
        await self.send_json({"chat": message["text"]})


class PlainConsumer(PresenceConsumerMixin, AsyncWebsocketConsumer):
    """A text consumer with dynamic groups from the URL route."""

    def get_presence_groups(self) -> list[str]:
        return [self.scope["url_route"]["kwargs"]["room"]]

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data)


class SyncConsumer(PresenceConsumerMixin, JsonWebsocketConsumer):
    """The sync flavour: same behaviour through WebsocketConsumer."""

    presence_groups = ["sync-room"]

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        if "join" in content:
            self.presence_join(content["join"])
        self.send_json({"ok": True})

    def presence_closing(self, reason: str, code: int) -> None:  # type: ignore[override]
        self.send_json({"type": "session.superseded"})

    def chat_message(self, message: dict[str, Any]) -> None:
        self.send_json({"chat": message["text"]})


class CrashingConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Raises in connect, receive or disconnect, as the client asks."""

    presence_groups = ["crash"]

    async def connect(self) -> None:
        if self.scope["url_route"]["kwargs"].get("where") == "connect":
            raise RuntimeError("boom in connect")
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom in receive")

    async def disconnect(self, code: int) -> None:
        if self.scope["url_route"]["kwargs"].get("where") == "disconnect":
            raise RuntimeError("boom in disconnect")


class DiffConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Opts in to presence diffs and forwards them; attaches metadata."""

    presence_groups = ["stage"]
    presence_diffs = True

    def get_presence_meta(self) -> dict[str, Any] | None:
        return {"device": "test"}

    async def presence_diff(self, message: dict[str, Any]) -> None:
        await self.send_json({"diff": {k: message[k] for k in ("group", "joins", "leaves")}})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if "meta" in content:
            try:
                await self.presence_set_meta(content["meta"])
            except ValueError as exc:
                await self.send_json({"error": str(exc)})
                return
            await self.send_json({"meta": "ok"})


class SlowHookConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Its get_presence_groups() takes a while (a database query, say)."""

    hook_seconds = 0.3
    #: How long its presence_closing() takes (a last message that waits on I/O).
    closing_seconds = 0.0

    async def get_presence_groups(self) -> list[str]:  # type: ignore[override]
        await asyncio.sleep(self.hook_seconds)
        return ["lobby"]

    async def presence_closing(self, reason: str, code: int) -> None:
        await asyncio.sleep(self.closing_seconds)


class CloseInConnectConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Refuses every socket from its own connect() (a 403 to the handshake)."""

    presence_groups = ["lobby"]

    async def connect(self) -> None:
        await self.close()


class HangingConnectConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Refuses the socket, then never returns (a query that hangs): the socket
    has ended, the application is stuck."""

    presence_groups = ["lobby"]

    async def connect(self) -> None:
        await self.close()
        await asyncio.Event().wait()
