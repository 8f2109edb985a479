"""The public API: async forms, sync twins, disconnect_user and bad input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async

import channels_presence as presence
from channels_presence.exceptions import InvalidGroupName, InvalidUser
from tests.test_consumers import closed_with, still_open

pytestmark = pytest.mark.usefixtures("backend")


async def test_sync_twins_agree_with_the_async_forms(ws: Any, presence_settings: Any) -> None:
    presence_settings(MAX_SESSIONS=None)
    await ws(user=1)
    await ws(user=1)
    await ws(user=2)
    pairs = [
        (presence.agroup_size, presence.group_size, ("lobby",), 3),
        (presence.agroup_user_count, presence.group_user_count, ("lobby",), 2),
        (presence.agroup_members, presence.group_members, ("lobby",), [1, 2]),
        (presence.agroup_sizes, presence.group_sizes, (["lobby", "x"],), {"lobby": 3, "x": 0}),
        (presence.ais_online, presence.is_online, (2,), True),
        (presence.ais_online, presence.is_online, (3,), False),
        (presence.agroups, presence.groups, (), {"lobby": 3}),
    ]
    for async_form, sync_form, args, expected in pairs:
        assert await async_form(*args) == expected, async_form.__name__
        assert await sync_to_async(sync_form)(*args) == expected, sync_form.__name__
    assert await sync_to_async(presence.user_channels)(1) == await presence.auser_channels(1)


async def test_disconnect_user_closes_every_connection_and_counts_them(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    a = await ws(user=1)
    b = await ws(user=1)
    other = await ws(user=2)
    assert await presence.adisconnect_user(1, code=4005) == 2
    assert await closed_with(a, 4005) == [
        {"type": "session.superseded", "reason": "kicked", "code": 4005}
    ]
    await closed_with(b, 4005)
    await still_open(other)
    assert not await presence.ais_online(1)
    assert await presence.agroup_size("lobby") == 1
    assert await presence.adisconnect_user(1) == 0


async def test_disconnect_user_sync_twin_uses_close_code_by_default(ws: Any) -> None:
    comm = await ws(user=1)
    assert await sync_to_async(presence.disconnect_user)(1) == 1
    await closed_with(comm, 4001)


async def test_group_send_sync_twin(ws: Any) -> None:
    comm = await ws(user=1)
    sent = await sync_to_async(presence.group_send)("lobby", {"type": "chat.message", "text": "s"})
    assert sent == 1
    assert await comm.receive_json_from() == {"chat": "s"}


@pytest.mark.parametrize("bad", ["", "a b", "é", "x" * 100, "ok\n", None, 3, b"bytes"])
async def test_bad_group_names_are_refused_by_every_read(bad: Any) -> None:
    for call in (presence.agroup_size, presence.agroup_user_count, presence.agroup_members):
        with pytest.raises(InvalidGroupName):
            await call(bad)
    with pytest.raises(InvalidGroupName):
        await presence.agroup_sizes(["fine", bad])
    with pytest.raises(InvalidGroupName):
        await presence.agroup_send(bad, {"type": "x"})


async def test_group_sizes_refuses_a_bare_string() -> None:
    with pytest.raises(InvalidGroupName, match="wrap it in a list"):
        await presence.agroup_sizes("lobby")


@pytest.mark.parametrize("bad", [None, 1.5, True, [], "", object()])
async def test_bad_users_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidUser):
        await presence.auser_channels(bad)


async def test_users_by_object_int_str_or_uuid() -> None:
    from tests.conftest import FakeUser

    assert await presence.auser_channels(FakeUser(5)) == []
    assert await presence.auser_channels("5") == []
    assert await presence.auser_channels(uuid.uuid4()) == []


async def test_anonymous_user_object_is_refused_with_a_clear_error() -> None:
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(InvalidUser, match="anonymous"):
        await presence.ais_online(AnonymousUser())


async def test_disconnect_user_refuses_a_bad_close_code() -> None:
    with pytest.raises(ValueError, match="code 99"):
        await presence.adisconnect_user(1, code=99)


async def test_group_send_refuses_a_message_without_type() -> None:
    with pytest.raises(ValueError, match="'type'"):
        await presence.agroup_send("lobby", {"text": "no type"})
