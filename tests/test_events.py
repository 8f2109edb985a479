"""Signals, the leave grace, presence diffs, metadata and disconnect-on-logout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

import channels_presence as presence
from channels_presence import signals
from channels_presence.exceptions import InvalidMetadata
from channels_presence.heartbeat import get_heartbeat
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, SessionPolicy
from tests.test_consumers import closed_with, still_open

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def heard() -> Iterator[list[tuple[Any, ...]]]:
    """Every presence signal, in order, as (name, user, group/reason)."""
    log: list[tuple[Any, ...]] = []
    receivers = []

    def listen(name: str, signal: Any, extra: str | None) -> None:
        def receiver(sender: Any, **kwargs: Any) -> None:
            assert sender == signals.PRESENCE
            user = kwargs["connection"].user if "connection" in kwargs else kwargs["user"]
            log.append((name, user) + ((kwargs[extra],) if extra else ()))

        signal.connect(receiver)
        receivers.append((signal, receiver))

    listen("online", signals.user_online, None)
    listen("offline", signals.user_offline, None)
    listen("joined", signals.user_joined_group, "group")
    listen("left", signals.user_left_group, "group")
    listen("opened", signals.connection_opened, None)
    listen("closed", signals.connection_closed, "reason")
    yield log
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def only(log: list[tuple[Any, ...]], *names: str) -> list[tuple[Any, ...]]:
    return [e for e in log if e[0] in names]


async def test_online_and_offline_fire_once_per_user_without_grace(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(MAX_SESSIONS=None, LEAVE_GRACE=0)
    a = await ws(user=1)
    b = await ws(user=1)
    await a.disconnect()
    assert only(heard, "online", "offline") == [("online", "1")]
    await b.disconnect()
    assert only(heard, "online", "offline") == [("online", "1"), ("offline", "1")]
    assert only(heard, "joined", "left") == [("joined", "1", "lobby"), ("left", "1", "lobby")]
    assert only(heard, "opened", "closed") == [
        ("opened", "1"),
        ("opened", "1"),
        ("closed", "1", "disconnected"),
        ("closed", "1", "disconnected"),
    ]


async def test_a_reload_within_the_grace_does_not_flap(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(LEAVE_GRACE=0.3)
    first = await ws(user=1)
    await first.disconnect()
    await ws(user=1)  # the reload
    await asyncio.sleep(0.6)
    assert only(heard, "online", "offline", "joined", "left") == [
        ("online", "1"),
        ("joined", "1", "lobby"),
    ]


async def test_offline_and_left_arrive_after_the_grace(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(LEAVE_GRACE=0.2)
    comm = await ws(user=1)
    await comm.send_json_to({"join": "room-9"})
    await comm.receive_json_from()
    await comm.send_json_to({"leave": "room-9"})
    await comm.receive_json_from()
    await comm.disconnect()
    assert only(heard, "offline", "left") == []
    expected = [("left", "1", "lobby"), ("left", "1", "room-9"), ("offline", "1")]
    # Due 0.2 s + one 0.25 s settle tick later; a busy machine (the version
    # matrix runs this suite six times in CI) may need more than that.
    for _ in range(100):
        if sorted(only(heard, "offline", "left")) == expected:
            break
        await asyncio.sleep(0.05)
    assert sorted(only(heard, "offline", "left")) == expected


async def test_joining_and_leaving_a_group_later_announces_the_user_there(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(LEAVE_GRACE=0)
    comm = await ws(user=1)
    await comm.send_json_to({"join": "room-9"})
    await comm.receive_json_from()
    await comm.send_json_to({"leave": "room-9"})
    await comm.receive_json_from()
    assert only(heard, "joined", "left", "offline") == [
        ("joined", "1", "lobby"),
        ("joined", "1", "room-9"),
        ("left", "1", "room-9"),
    ]


async def test_a_group_left_while_still_connected_is_announced_after_the_grace(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(LEAVE_GRACE=0.2)
    comm = await ws(user=1)
    await comm.send_json_to({"join": "room-9"})
    await comm.receive_json_from()
    await comm.send_json_to({"leave": "room-9"})
    await comm.receive_json_from()
    assert only(heard, "left") == []
    for _ in range(40):
        await asyncio.sleep(0.05)
        if only(heard, "left"):
            break
    assert only(heard, "left", "offline") == [("left", "1", "room-9")]


async def test_departures_due_on_different_ticks_are_each_announced_in_time(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    """The grace timer fires again for a later departure; no heartbeat is needed."""
    presence_settings(LEAVE_GRACE=0.5)  # heartbeats every 20 s: none will help
    first, second = await ws(user=1), await ws(user=2)
    await first.disconnect()
    await asyncio.sleep(0.3)  # the second is due more than one tick later
    await second.disconnect()
    for _ in range(60):
        await asyncio.sleep(0.05)
        if len(only(heard, "offline")) == 2:
            break
    assert only(heard, "offline") == [("offline", "1"), ("offline", "2")]


async def test_the_grace_timer_works_again_after_it_fired(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(LEAVE_GRACE=0.1)
    for pk in (1, 2):
        comm = await ws(user=pk)
        await comm.disconnect()
        for _ in range(40):
            await asyncio.sleep(0.05)
            if ("offline", str(pk)) in heard:
                break
    assert only(heard, "offline") == [("offline", "1"), ("offline", "2")]


async def test_superseded_and_kicked_connections_are_closed_with_their_reason(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    presence_settings(LEAVE_GRACE=0)
    first = await ws(user=1)
    second = await ws(user=1)
    await closed_with(first, 4001)
    await presence.adisconnect_user(1)
    await closed_with(second, 4001)
    assert only(heard, "closed") == [("closed", "1", "superseded"), ("closed", "1", "kicked")]
    assert only(heard, "online", "offline") == [("online", "1"), ("offline", "1")]


async def test_expired_entries_get_the_same_events_exactly_once(
    ws: Any, presence_settings: Any, heard: list[Any]
) -> None:
    """A connection whose server died is swept by a live server's heartbeat."""
    presence_settings(TTL=1, LEAVE_GRACE=0.1)
    store = get_store()
    ghost = Connection(
        "specific.dead!ghost", user="42", session=None, groups=("lobby",), conn_id="deadnode.1"
    )
    await store.aconnect(ghost, SessionPolicy(max_sessions=None))
    await ws(user=1)
    assert await presence.agroup_user_count("lobby") == 2
    await asyncio.sleep(1.1)
    heartbeat = get_heartbeat()
    await heartbeat.beat()
    await heartbeat.beat()
    assert await presence.agroup_members("lobby") == [1]
    assert only(heard, "closed") == [("closed", "42", "expired")]
    await asyncio.sleep(0.3)
    await heartbeat.beat()
    assert sorted(only(heard, "offline", "left")) == [("left", "42", "lobby"), ("offline", "42")]


async def test_a_heartbeat_without_local_connections_discards_the_dead_from_layer_groups(
    presence_settings: Any, heard: list[Any]
) -> None:
    """The last process up sweeps a crashed peer's entry out of its layer group too."""
    from channels.layers import get_channel_layer

    presence_settings(TTL=1, LEAVE_GRACE=0)
    layer = get_channel_layer()
    ghost = Connection(
        "specific.dead!ghost", user="42", session=None, groups=("lobby",), conn_id="deadnode.1"
    )
    await get_store().aconnect(ghost, SessionPolicy(max_sessions=None))
    await layer.group_add("lobby", ghost.channel_name)
    await asyncio.sleep(1.1)
    heartbeat = get_heartbeat()
    assert len(heartbeat) == 0
    await heartbeat.beat()
    assert ghost.channel_name not in layer.groups.get("lobby", {})
    assert only(heard, "closed") == [("closed", "42", "expired")]


async def test_async_receivers_and_a_failing_receiver(
    ws: Any, presence_settings: Any, caplog: Any
) -> None:
    presence_settings(LEAVE_GRACE=0)
    got: list[str] = []

    async def async_receiver(sender: Any, user: str, **kwargs: Any) -> None:
        got.append(user)

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.user_online.connect(async_receiver)
    signals.user_online.connect(broken)
    try:
        comm = await ws(user=3)
        await still_open(comm)
    finally:
        signals.user_online.disconnect(async_receiver)
        signals.user_online.disconnect(broken)
    assert got == ["3"]
    assert "receiver bug" in caplog.text


async def test_diffs_are_coalesced_per_group(ws: Any, presence_settings: Any) -> None:
    presence_settings(MAX_SESSIONS=None, LEAVE_GRACE=0, DIFF_INTERVAL=0.2)
    watcher = await ws("/ws/diff/", user=100)
    first = await watcher.receive_json_from(timeout=1)
    assert first == {"diff": {"group": "stage", "joins": [100], "leaves": []}}
    started = time.monotonic()
    for pk in range(1, 21):
        await ws("/ws/diff/", user=pk)
    burst_s = time.monotonic() - started
    # One diff per DIFF_INTERVAL at most: a burst that straddles a flush (a
    # slow machine) may come in a few, never one a join.
    diffs: list[dict[str, Any]] = []
    while sum(len(d["joins"]) for d in diffs) < 20:
        diffs.append((await watcher.receive_json_from(timeout=2))["diff"])
    assert len(diffs) <= burst_s / 0.2 + 2, (burst_s, diffs)
    joins = [pk for d in diffs for pk in d["joins"]]
    assert joins == list(range(1, 21))
    assert all(d["group"] == "stage" and d["leaves"] == [] for d in diffs)
    assert await watcher.receive_nothing(timeout=0.4)


async def test_leaves_reach_the_diffs_once_the_grace_is_over(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(DIFF_INTERVAL=0.05, LEAVE_GRACE=0)
    watcher = await ws("/ws/diff/", user=100)
    await watcher.receive_json_from()  # its own join
    leaving = await ws("/ws/diff/", user=7)
    assert await watcher.receive_json_from() == {
        "diff": {"group": "stage", "joins": [7], "leaves": []}
    }
    await leaving.disconnect()
    assert await watcher.receive_json_from() == {
        "diff": {"group": "stage", "joins": [], "leaves": [7]}
    }


async def test_a_group_whose_changes_cancelled_out_does_not_hold_back_the_others(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(DIFF_INTERVAL=0.3, LEAVE_GRACE=0)
    watcher = await ws("/ws/diff/", user=100)
    await watcher.receive_json_from()  # its own join
    # Within one interval: someone comes and goes in the lobby (nothing to tell
    # there), then someone joins the stage.
    passing = await ws(user=5)
    await passing.disconnect()
    await ws("/ws/diff/", user=7)
    assert await watcher.receive_json_from(timeout=2) == {
        "diff": {"group": "stage", "joins": [7], "leaves": []}
    }


async def test_lobby_consumers_without_opt_in_ignore_diffs(ws: Any, presence_settings: Any) -> None:
    presence_settings(DIFF_INTERVAL=0.05, LEAVE_GRACE=0)
    lobby = await ws(user=1)
    await ws(user=2)
    assert await lobby.receive_nothing(timeout=0.3)


async def test_metadata_is_stored_listed_and_replaced(ws: Any, presence_settings: Any) -> None:
    presence_settings(DIFF_INTERVAL=0.05)
    comm = await ws("/ws/diff/", user=7)
    (conn,) = (await presence.agroup_connections("stage"))[7]
    assert conn.meta == {"device": "test"}
    await comm.receive_json_from()  # its own join diff
    await comm.send_json_to({"meta": {"device": "phone", "name": "Ada"}})
    assert await comm.receive_json_from() == {"meta": "ok"}
    (conn,) = (await presence.agroup_connections("stage"))[7]
    assert conn.meta == {"device": "phone", "name": "Ada"}


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"blob": "x" * 2000}, "METADATA_MAX_BYTES"),
        ([1, 2], "must be a dict"),
        ({"when": object()}, "not JSON-serialisable"),
        ({"nan": float("nan")}, "not JSON"),
    ],
)
async def test_bad_metadata_is_refused_and_nothing_changes(
    ws: Any, presence_settings: Any, meta: Any, says: str
) -> None:
    presence_settings(DIFF_INTERVAL=0.05)
    from channels_presence.tracker import check_metadata

    with pytest.raises(InvalidMetadata, match=says):
        check_metadata(meta)
    comm = await ws("/ws/diff/", user=7)
    await comm.receive_json_from()
    if isinstance(meta, list) or "blob" in meta:
        await comm.send_json_to({"meta": meta})
        reply = await comm.receive_json_from()
        assert says in reply["error"]
    (conn,) = (await presence.agroup_connections("stage"))[7]
    assert conn.meta == {"device": "test"}


@pytest.mark.django_db(transaction=True)
async def test_logging_out_over_http_closes_every_socket_of_the_user(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    user = await sync_to_async(get_user_model().objects.create_user)("di", password="pw")
    laptop, phone = Client(), Client()
    await sync_to_async(laptop.force_login)(user)
    await sync_to_async(phone.force_login)(user)
    on_laptop = await ws(user=user.pk, session=laptop.session.session_key)
    on_phone = await ws(user=user.pk, session=phone.session.session_key)
    other = await ws(user=user.pk + 1000)
    await sync_to_async(laptop.logout)()
    for comm in (on_laptop, on_phone):
        texts = await closed_with(comm, 4002)
        assert texts == [{"type": "session.superseded", "reason": "logged_out", "code": 4002}]
    await still_open(other)
    assert not await presence.ais_online(user)


@pytest.mark.django_db(transaction=True)
async def test_logging_out_with_session_scope_closes_that_sessions_sockets_only(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None, DISCONNECT_ON_LOGOUT="session")
    user = await sync_to_async(get_user_model().objects.create_user)("bo", password="pw")
    laptop, phone = Client(), Client()
    await sync_to_async(laptop.force_login)(user)
    await sync_to_async(phone.force_login)(user)
    laptop_key = laptop.session.session_key
    on_laptop = await ws(user=user.pk, session=laptop_key)
    on_phone = await ws(user=user.pk, session=phone.session.session_key)
    await sync_to_async(laptop.logout)()
    texts = await closed_with(on_laptop, 4002)
    assert texts == [{"type": "session.superseded", "reason": "logged_out", "code": 4002}]
    await still_open(on_phone)
    assert await presence.agroup_size("lobby") == 1


@pytest.mark.django_db(transaction=True)
async def test_logout_leaves_sockets_open_when_turned_off(ws: Any, presence_settings: Any) -> None:
    presence_settings(DISCONNECT_ON_LOGOUT=False)
    user = await sync_to_async(get_user_model().objects.create_user)("cy", password="pw")
    comm = await ws(user=user.pk)
    client = Client()
    await sync_to_async(client.force_login)(user)
    await sync_to_async(client.logout)()
    await still_open(comm)
