"""The websocket side: a lobby that watches room populations, and the rooms.

Both consumers use ``PresenceConsumerMixin``, so a lobby tab counts as a
session too: signing in elsewhere closes it with code 4001, like a room tab.
The mixin records each connection and joins its presence groups (in the
channel layer too) before ``connect()`` runs, and takes it out again before
``disconnect()`` runs.

Population updates are pushed as a "changed" nudge rather than as the state
itself: each consumer reads the state when the nudge arrives. Nudges are handled
one at a time per consumer, so the last read always follows the last change,
even when two changes race and their broadcasts arrive out of order.

A room's member list is kept by the page's ``PresenceSocket`` (the browser
client channels_presence ships): the room sends the members once on connect
(``presence.members``) and forwards every presence diff (``presence.diff``),
each with the usernames of the users it names. Before a socket is closed by
presence, the page is told why (``presence.closing``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.cache import cache

import channels_presence
from channels_presence.consumers import PresenceConsumerMixin

from .rooms import LOBBY_GROUP, ROOMS, Room
from .state import aroom_state, aroom_states, ausernames

# Application close codes the page understands (4001 is channels_presence's).
NOT_SIGNED_IN = 4401
NO_SUCH_ROOM = 4404

MAX_MESSAGE_LENGTH = 500
HISTORY_LENGTH = 30


def _history_key(room: Room) -> str:
    return f"demo:history:{room.slug}"


async def refuse(consumer: AsyncJsonWebsocketConsumer, code: int) -> None:
    """Close with ``code``. Accept first: a refused handshake reaches the page as 1006."""
    await consumer.accept()
    await consumer.close(code=code)


class LobbyConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Sends every room's population on connect and whenever one changes."""

    presence_groups = [LOBBY_GROUP]

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await refuse(self, NOT_SIGNED_IN)
            return
        await self.accept()
        await self.send_json({"type": "lobby.state", "rooms": await aroom_states()})

    async def room_changed(self, event: dict[str, Any]) -> None:
        room = ROOMS[event["room"]]
        await self.send_json({"type": "room.state", **await aroom_state(room)})

    async def presence_closing(self, reason: str, code: int) -> None:
        await self.send_json({"type": "presence.closing", "reason": reason})


class RoomConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """A chat room: live member list, counts and messages."""

    presence_diffs = True
    room: Room | None = None

    def get_presence_groups(self) -> list[str]:
        # Called by the mixin before connect(): the room comes from the URL.
        room = ROOMS.get(self.scope["url_route"]["kwargs"]["room"])
        return [room.group] if room else []

    async def connect(self) -> None:
        # The mixin has already recorded this connection and joined the room's
        # group (presence and channel layer), closing this user's older sockets.
        if not self.scope["user"].is_authenticated:
            await refuse(self, NOT_SIGNED_IN)
            return
        room = ROOMS.get(self.scope["url_route"]["kwargs"]["room"])
        if room is None:
            await refuse(self, NO_SUCH_ROOM)
            return
        self.room = room
        await self.accept()
        history = await cache.aget(_history_key(room), [])
        await self.send_json({"type": "chat.history", "messages": history})
        members = await channels_presence.agroup_members(room.group)
        await self.send_json(
            {
                "type": "presence.members",
                "group": room.group,
                "members": members,
                "names": await ausernames(members),
            }
        )
        await self._announce_change()

    async def disconnect(self, code: int) -> None:
        # The mixin took this connection out of presence just before, so the
        # populations announced now no longer count it.
        if self.room is not None:
            await self._announce_change()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self.room is None or not isinstance(content, dict):
            return
        if content.get("type") != "chat.message":
            return
        text = str(content.get("text", "")).strip()[:MAX_MESSAGE_LENGTH]
        if not text:
            return
        message = {
            "user": self.scope["user"].get_username(),
            "text": text,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # A read-modify-write: two servers posting at the same instant may drop
        # one line from the history (never from the live feed). Fine for a demo.
        key = _history_key(self.room)
        history = await cache.aget(key, [])
        await cache.aset(key, [*history, message][-HISTORY_LENGTH:], timeout=None)
        await self.channel_layer.group_send(
            self.room.group, {"type": "chat.message", "message": message}
        )

    async def presence_diff(self, message: dict[str, Any]) -> None:
        # Who joined and left the room, gathered over DIFF_INTERVAL; leaves come
        # LEAVE_GRACE late, so a reload shows nobody leaving.
        await self.send_json(
            {
                "type": "presence.diff",
                "group": message["group"],
                "joins": message["joins"],
                "leaves": message["leaves"],
                "names": await ausernames(message["joins"]),
            }
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "chat.message", **event["message"]})

    async def room_changed(self, event: dict[str, Any]) -> None:
        if self.room is not None and event["room"] == self.room.slug:
            await self.send_json({"type": "room.state", **await aroom_state(self.room)})

    async def presence_closing(self, reason: str, code: int) -> None:
        await self.send_json({"type": "presence.closing", "reason": reason})

    async def _announce_change(self) -> None:
        assert self.room is not None
        nudge = {"type": "room.changed", "room": self.room.slug}
        # agroup_send skips a group nobody is in (the room after its last leaver).
        await channels_presence.agroup_send(self.room.group, nudge)
        await channels_presence.agroup_send(LOBBY_GROUP, nudge)
