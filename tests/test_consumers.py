"""PresenceConsumerMixin on the embedded default: policies, groups, crashes, input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import ImproperlyConfigured

import channels_presence as presence
from channels_presence.consumers import PresenceConsumerMixin
from channels_presence.exceptions import InvalidGroupName
from tests.consumers import LobbyConsumer

pytestmark = pytest.mark.usefixtures("backend")


async def closed_with(comm: Any, code: int) -> list[Any]:
    """Read until the close frame; assert its code; return the JSON texts before it."""
    texts = []
    while True:
        out = await comm.receive_output(timeout=2)
        if out["type"] == "websocket.close":
            assert out.get("code") == code, out
            return texts
        texts.append(json.loads(out["text"]))


async def still_open(comm: Any) -> None:
    await comm.send_json_to({"ping": 1})
    assert await comm.receive_json_from(timeout=2) == {"echo": {"ping": 1}}


# Single-session enforcement -------------------------------------------------------


async def test_same_user_twice_closes_the_first_with_4001(ws: Any) -> None:
    first = await ws(user=1)
    second = await ws(user=1)
    texts = await closed_with(first, 4001)
    assert texts == [{"type": "session.superseded", "reason": "superseded", "code": 4001}]
    await still_open(second)
    assert await presence.agroup_size("lobby") == 1
    assert await presence.auser_channels(1) == [
        (await presence.auser_connections(1))[0].channel_name
    ]


async def test_max_sessions_two_closes_only_the_oldest(ws: Any, presence_settings: Any) -> None:
    presence_settings(MAX_SESSIONS=2)
    first = await ws(user=1)
    second = await ws(user=1)
    assert await presence.agroup_size("lobby") == 2
    third = await ws(user=1)
    await closed_with(first, 4001)
    await still_open(second)
    await still_open(third)
    assert await presence.agroup_size("lobby") == 2
    assert await presence.agroup_user_count("lobby") == 1


async def test_max_sessions_none_is_unlimited(ws: Any, presence_settings: Any) -> None:
    presence_settings(MAX_SESSIONS=None)
    comms = [await ws(user=7) for _ in range(5)]
    for comm in comms:
        await still_open(comm)
    assert await presence.agroup_size("lobby") == 5
    assert await presence.agroup_user_count("lobby") == 1
    assert len(await presence.auser_channels(7)) == 5


async def test_reject_new_refuses_with_4003_and_keeps_the_first(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(ON_LIMIT="reject_new")
    first = await ws(user=1)
    refused = await ws(user=1)
    assert await closed_with(refused, 4003) == []
    await still_open(first)
    assert await presence.agroup_size("lobby") == 1
    assert len(await presence.auser_channels(1)) == 1


async def test_custom_close_and_reject_codes(ws: Any, presence_settings: Any) -> None:
    presence_settings(CLOSE_CODE=4100)
    first = await ws(user=1)
    await ws(user=1)
    await closed_with(first, 4100)


async def test_session_scope_keeps_tabs_of_one_browser(ws: Any, presence_settings: Any) -> None:
    presence_settings(SESSION_SCOPE="session")
    tab1 = await ws(user=1, session="browser-a")
    tab2 = await ws(user=1, session="browser-a")
    await still_open(tab1)
    await still_open(tab2)
    assert await presence.agroup_size("lobby") == 2
    elsewhere = await ws(user=1, session="browser-b")
    await closed_with(tab1, 4001)
    await closed_with(tab2, 4001)
    await still_open(elsewhere)
    assert await presence.agroup_size("lobby") == 1


async def test_session_scope_reject_new_lets_the_same_session_in(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(SESSION_SCOPE="session", ON_LIMIT="reject_new")
    tab1 = await ws(user=1, session="a")
    tab2 = await ws(user=1, session="a")
    refused = await ws(user=1, session="b")
    await closed_with(refused, 4003)
    await still_open(tab1)
    await still_open(tab2)


async def test_other_users_are_never_evicted(ws: Any) -> None:
    alice = await ws(user=1)
    bob = await ws(user=2)
    await ws(user=2)
    await closed_with(bob, 4001)
    await still_open(alice)
    assert await presence.agroup_user_count("lobby") == 2


# Populations --------------------------------------------------------------------------


async def test_populations_follow_users_coming_and_going(ws: Any, presence_settings: Any) -> None:
    presence_settings(MAX_SESSIONS=None)
    a1 = await ws(user=1)
    a2 = await ws(user=1)
    b = await ws(user=2)
    assert await presence.agroup_size("lobby") == 3
    assert await presence.agroup_user_count("lobby") == 2
    assert await presence.agroup_members("lobby") == [1, 2]
    await a1.disconnect()
    assert await presence.agroup_user_count("lobby") == 2
    await a2.disconnect()
    assert await presence.agroup_members("lobby") == [2]
    assert await presence.ais_online(2) and not await presence.ais_online(1)
    await b.disconnect()
    assert await presence.agroup_size("lobby") == 0
    assert await presence.agroup_user_count("lobby") == 0
    assert await presence.agroup_members("lobby") == []
    assert await presence.agroups() == {}


async def test_disconnect_hook_sees_the_population_without_itself(ws: Any) -> None:
    LobbyConsumer.seen_in_disconnect.clear()
    await ws(user=1)
    leaving = await ws(user=2)
    await leaving.disconnect()
    assert LobbyConsumer.seen_in_disconnect == [1]


async def test_join_and_leave_later(ws: Any) -> None:
    comm = await ws(user=1)
    await comm.send_json_to({"join": "room-1"})
    assert await comm.receive_json_from() == {"joined": "room-1"}
    assert await presence.agroup_sizes(["lobby", "room-1", "room-2"]) == {
        "lobby": 1,
        "room-1": 1,
        "room-2": 0,
    }
    assert await presence.agroup_send("room-1", {"type": "chat.message", "text": "hi"}) == 1
    assert await comm.receive_json_from() == {"chat": "hi"}
    await comm.send_json_to({"leave": "room-1"})
    assert await comm.receive_json_from() == {"left": "room-1"}
    assert await presence.agroup_size("room-1") == 0
    # Left in the layer too: an unguarded group_send delivers nothing.
    from channels.layers import get_channel_layer

    await get_channel_layer().group_send("room-1", {"type": "chat.message", "text": "x"})
    assert await comm.receive_nothing(timeout=0.2)


async def test_groups_from_get_presence_groups(ws: Any) -> None:
    await ws("/ws/room/kitchen/", user=3)
    assert await presence.agroup_size("kitchen") == 1
    assert await presence.agroup_members("kitchen") == [3]


async def test_group_send_to_an_empty_group_costs_no_layer_call(
    ws: Any, layer_sends: list[str]
) -> None:
    assert await presence.agroup_send("nobody-here", {"type": "chat.message", "text": "x"}) == 0
    assert layer_sends == []
    await ws(user=1)
    assert await presence.agroup_send("lobby", {"type": "chat.message", "text": "x"}) == 1
    assert layer_sends == ["lobby"]


# Crashes and cleanup ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["connect", "receive", "disconnect"])
async def test_a_consumer_that_raises_leaves_no_ghost(ws: Any, where: str) -> None:
    if where == "connect":
        with pytest.raises(RuntimeError, match="boom in connect"):
            await ws("/ws/crash/connect/", user=5)
    else:
        comm = await ws(f"/ws/crash/{where}/", user=5)
        assert await presence.agroup_size("crash") == 1
        if where == "receive":
            await comm.send_json_to({"x": 1})
        else:
            await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        with pytest.raises(RuntimeError, match=f"boom in {where}"):
            await comm.wait(timeout=2)
    assert await presence.agroup_size("crash") == 0
    assert await presence.auser_channels(5) == []
    assert await presence.agroups() == {}


# Anonymous connections ----------------------------------------------------------------


async def test_anonymous_connections_work_but_are_not_tracked_by_default(ws: Any) -> None:
    comm = await ws(user=None)
    await still_open(comm)
    assert await presence.agroup_size("lobby") == 0
    assert await presence.agroup_user_count("lobby") == 0


async def test_anonymous_tracked_count_as_connections_never_users(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(ANONYMOUS="track")
    await ws(user=None)
    await ws(user=None)
    await ws(user=1)
    assert await presence.agroup_size("lobby") == 3
    assert await presence.agroup_user_count("lobby") == 1
    assert await presence.agroup_members("lobby") == [1]
    conns = await presence.agroup_connections("lobby")
    assert len(conns[None]) == 2


# Sync consumers ------------------------------------------------------------------------


async def test_sync_consumer_is_supported(ws: Any) -> None:
    first = await ws("/ws/sync/", user=9)
    await first.send_json_to({"join": "sync-extra"})
    assert await first.receive_json_from() == {"ok": True}
    assert await presence.agroup_sizes(["sync-room", "sync-extra"]) == {
        "sync-room": 1,
        "sync-extra": 1,
    }
    await ws("/ws/sync/", user=9)
    assert await closed_with(first, 4001) == [{"type": "session.superseded"}]
    assert await presence.agroup_size("sync-room") == 1
    assert await presence.agroup_size("sync-extra") == 0


# Bad input --------------------------------------------------------------------------------


async def test_unknown_presence_message_does_not_kill_the_consumer(ws: Any) -> None:
    comm = await ws(user=1)
    channel = (await presence.auser_channels(1))[0]
    from channels.layers import get_channel_layer

    await get_channel_layer().send(channel, {"type": "presence.nonsense"})
    await still_open(comm)


async def test_client_frame_imitating_presence_close_does_nothing(ws: Any) -> None:
    comm = await ws(user=1)
    await comm.send_json_to({"type": "presence.close", "code": 4001})
    assert await comm.receive_json_from() == {"echo": {"type": "presence.close", "code": 4001}}
    await still_open(comm)
    assert await presence.agroup_size("lobby") == 1


async def test_bad_group_name_in_join_raises_before_anything_is_written(ws: Any) -> None:
    comm = await ws(user=1)
    await comm.send_json_to({"join": "bad name!"})
    with pytest.raises(InvalidGroupName, match="bad name!"):
        await comm.wait(timeout=2)
    assert await presence.agroups() == {}


def test_bad_presence_groups_fail_at_class_definition() -> None:
    with pytest.raises(InvalidGroupName, match="no spaces"):

        class Bad(PresenceConsumerMixin, AsyncWebsocketConsumer):
            presence_groups = ["no spaces"]


def test_mixin_listed_after_the_consumer_base_fails_at_class_definition() -> None:
    with pytest.raises(ImproperlyConfigured, match="before the consumer base"):

        class Wrong(AsyncWebsocketConsumer, PresenceConsumerMixin):
            pass


def test_mixin_on_an_http_consumer_fails_at_class_definition() -> None:
    with pytest.raises(ImproperlyConfigured, match="websocket consumers"):

        class Http(PresenceConsumerMixin, AsyncHttpConsumer):
            pass
