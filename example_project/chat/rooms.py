"""The demo's rooms, and the group names each one uses."""

from __future__ import annotations

from dataclasses import dataclass

# Lobby viewers listen here for "a room's population changed".
LOBBY_GROUP = "lobby"


@dataclass(frozen=True)
class Room:
    slug: str
    title: str
    description: str

    @property
    def group(self) -> str:
        """The presence group (and channel-layer group) of the room's connections."""
        return f"room.{self.slug}"


ROOMS = {
    room.slug: room
    for room in (
        Room("general", "General", "Say hello. Everyone ends up here."),
        Room("python", "Python", "Async, Django and the occasional walrus."),
        Room("random", "Random", "Off-topic, weekend plans, cat pictures in words."),
    )
}
