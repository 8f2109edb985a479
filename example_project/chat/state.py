"""Who is where: the room populations the pages show, read from channels_presence."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

import channels_presence

from .rooms import ROOMS, Room


def _usernames(pks: Iterable[Any]) -> dict[str, str]:
    """``str(pk) -> username`` for the given user keys, in one query."""
    keys = [pk for pk in pks if pk is not None]
    if not keys:
        return {}
    users = get_user_model().objects.filter(pk__in=keys).values_list("pk", "username")
    return {str(pk): username for pk, username in users}


def _state(
    room: Room, members: Iterable[Any], people: int, connections: int, names: dict[str, str]
) -> dict[str, Any]:
    return {
        "room": room.slug,
        "members": sorted(names[str(pk)] for pk in members if str(pk) in names),
        "people": people,
        "connections": connections,
    }


async def ausernames(pks: Iterable[Any]) -> dict[str, str]:
    """``str(pk) -> username`` for the given user keys, in one query."""
    return await database_sync_to_async(_usernames)(list(pks))


async def aroom_state(room: Room) -> dict[str, Any]:
    """The live population of one room: usernames, people and connections."""
    members = await channels_presence.agroup_members(room.group)
    people = await channels_presence.agroup_user_count(room.group)
    connections = await channels_presence.agroup_size(room.group)
    names = await ausernames(members)
    return _state(room, members, people, connections, names)


def room_states() -> list[dict[str, Any]]:
    """Every room's population, for the lobby page's first render."""
    states = []
    for room in ROOMS.values():
        members = channels_presence.group_members(room.group)
        states.append(
            _state(
                room,
                members,
                channels_presence.group_user_count(room.group),
                channels_presence.group_size(room.group),
                _usernames(members),
            )
        )
    return states


async def aroom_states() -> list[dict[str, Any]]:
    """Every room's population, for the lobby socket."""
    return [await aroom_state(room) for room in ROOMS.values()]
