"""Presence signals across real server processes: each sent once, by one process.

The servers record every signal they send (``record_events=True``: one JSON
line per signal on a Redis list, tagged with the server's name; see
``project/recorder.py``), so a test reads what every process announced, in
order. Users reload pages (possibly onto the other server), leave cleanly,
and lose their server to SIGKILL; the record must show each announcement
exactly once, after the leave grace, and none for a reload.

A test that asserts that something was *not* announced waits out the window
in which it would have been: the grace plus two heartbeats (a due departure
is claimed by the departing process's timer or, failing that, by the next
heartbeat of any process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import Cluster, LiveClient, Login, eventually, recorded_events

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

StartCluster = Callable[..., Cluster]

TTL = 2.0
HEARTBEAT = TTL / 3
GRACE = 1.0
#: How long after a departure its announcement may still come (claimed by the
#: departing process's timer at GRACE, by a heartbeat at most one period later).
ANNOUNCE_WITHIN = GRACE + 2 * HEARTBEAT + 0.5
SETTINGS = {"MAX_SESSIONS": None, "TTL": TTL, "LEAVE_GRACE": GRACE}


class Record:
    """The signals a cluster's servers recorded, read on demand."""

    def __init__(self, cluster: Cluster, layer_redis_url: str) -> None:
        self.cluster = cluster
        self.url = layer_redis_url

    async def read(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(recorded_events, self.url, self.cluster.config)

    async def mark(self) -> int:
        """The number of signals so far: pass it to :meth:`since`."""
        return len(await self.read())

    async def since(self, mark: int) -> list[dict[str, Any]]:
        return (await self.read())[mark:]


def of(events: list[dict[str, Any]], signal: str, **fields: Any) -> list[dict[str, Any]]:
    """The events of ``signal`` whose fields equal ``fields``."""
    return [
        e for e in events if e["signal"] == signal and all(e.get(k) == v for k, v in fields.items())
    ]


def about(events: list[dict[str, Any]], user: int) -> list[tuple[str, Any, Any]]:
    """A user's events as ``(signal, group, reason)``, in order: for readable failures."""
    return [(e["signal"], e["group"], e["reason"]) for e in events if e["user"] == str(user)]


def unordered(items: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """``items`` in a fixed order, duplicates kept: compare announcements as a multiset."""
    return sorted(items, key=str)


async def start(start_cluster: StartCluster, names: tuple[str, ...] = ("a", "b")) -> Cluster:
    return await asyncio.to_thread(start_cluster, SETTINGS, names=names, record_events=True)


async def open_client(server: Any, login: Login, label: str) -> LiveClient:
    client = await LiveClient.open(server, login, label=label)
    assert client.hello is not None, f"{label} refused with {client.close_code}"
    return client


@pytest.fixture
async def live() -> Any:
    """LiveClients of one test, closed at teardown."""
    opened: list[LiveClient] = []
    yield opened
    await asyncio.gather(*(c.close() for c in opened))


@pytest.mark.parametrize("onto", ["same", "other"])
async def test_a_reload_within_the_grace_announces_nothing_about_the_user(
    start_cluster: StartCluster, layer_redis_url: str, live: list[LiveClient], onto: str
) -> None:
    """A page reload (socket closed, a new one opened on the same or the OTHER server and
    its room joined again, within LEAVE_GRACE) sends no user_offline/user_online and no
    user_left_group/user_joined_group pair: only connection_closed("disconnected") of the
    old socket by its server and connection_opened of the new one by the new server."""
    cluster = await start(start_cluster)
    a, b = cluster
    record = Record(cluster, layer_redis_url)
    alice, bob = await a.alogin("alice"), await b.alogin("bob")
    live.append(await open_client(b, bob, "bystander"))
    before = await open_client(a, alice, "alice-before")
    live.append(before)
    await before.request({"join": "room1"}, "joined")
    first = await record.read()
    mine = [e for e in first if e["user"] == str(alice.user)]
    assert [(e["signal"], e["group"], e["server"]) for e in mine] == [
        ("connection_opened", None, "a"),
        ("user_online", None, "a"),
        ("user_joined_group", "lobby", "a"),
        ("user_joined_group", "room1", "a"),
    ]

    mark = len(first)
    target = a if onto == "same" else b
    await before.close()
    after = await open_client(target, alice, "alice-after")
    live.append(after)
    await after.request({"join": "room1"}, "joined")
    await asyncio.sleep(ANNOUNCE_WITHIN)

    events = await record.since(mark)
    # In either order: the old socket's disconnect may be handled after the new connect.
    assert unordered(about(events, alice.user)) == unordered(
        [("connection_closed", None, "disconnected"), ("connection_opened", None, None)]
    )
    assert of(events, "connection_closed", channel=before.channel)[0]["server"] == "a"
    assert of(events, "connection_opened", channel=after.channel)[0]["server"] == target.name


async def test_a_clean_leave_announces_left_and_offline_once_after_the_grace(
    start_cluster: StartCluster, layer_redis_url: str, live: list[LiveClient]
) -> None:
    """Leaving a room sends one user_left_group for it, no sooner than LEAVE_GRACE later;
    closing the last socket sends one connection_closed("disconnected") at once, then,
    after the grace, one user_left_group per remaining group and one user_offline, each
    by exactly one server, and nothing more however long one waits."""
    cluster = await start(start_cluster)
    a, b = cluster
    record = Record(cluster, layer_redis_url)
    bob, alice = await b.alogin("bob"), await a.alogin("alice")
    live.append(await open_client(a, alice, "bystander"))
    sock = await open_client(b, bob, "bob")
    live.append(sock)
    for room in ("room1", "room2"):
        await sock.request({"join": room}, "joined")

    mark = await record.mark()
    left_at = time.time()
    await sock.request({"leave": "room1"}, "left")
    events, _ = await eventually(
        lambda: record.since(mark),
        lambda ev: bool(of(ev, "user_left_group", user=str(bob.user))),
        timeout=ANNOUNCE_WITHIN + 1,
        what="bob's left room1",
    )
    [left] = of(events, "user_left_group", user=str(bob.user))
    assert left["group"] == "room1"
    assert left["at"] >= left_at + GRACE - 0.05, "announced before the grace was over"

    mark = await record.mark()
    closed_at = time.time()
    await sock.close()
    await eventually(
        lambda: record.since(mark),
        lambda ev: bool(of(ev, "user_offline", user=str(bob.user))),
        timeout=ANNOUNCE_WITHIN + 1,
        what="bob's offline",
    )
    await asyncio.sleep(ANNOUNCE_WITHIN)  # any duplicate would be out by now
    events = await record.since(mark)
    assert unordered(about(events, bob.user)) == unordered(
        [
            ("connection_closed", None, "disconnected"),
            ("user_left_group", "lobby", None),
            ("user_left_group", "room2", None),
            ("user_offline", None, None),
        ]
    ), about(events, bob.user)
    for event in of(events, "user_left_group") + of(events, "user_offline"):
        assert event["at"] >= closed_at + GRACE - 0.05, f"announced before the grace: {event}"
        assert event["server"] in ("a", "b")
    assert of(events, "connection_closed", user=str(bob.user))[0]["server"] == "b"
    assert about(events, alice.user) == []


@pytest.mark.parametrize("survivors", [1, 2], ids=["one-survivor", "two-survivors"])
async def test_a_sigkilled_servers_connections_get_their_events_once_from_a_survivor(
    start_cluster: StartCluster, layer_redis_url: str, live: list[LiveClient], survivors: int
) -> None:
    """Server A is SIGKILLed holding: carol's two sockets (one in room1), dave's socket in
    room2 (dave has another on B), bob's socket (bob reconnects on B at once, as a
    browser retries). After TTL: exactly one connection_closed("expired") per dead socket,
    one user_offline (carol), user_left_group for carol's lobby and room1 and dave's room2,
    nothing for bob, dave's lobby or alice; every one sent by a surviving server, none twice
    (with two survivors their heartbeats race to sweep and to claim)."""
    names = ("a", "b", "c")[: survivors + 1]
    cluster = await start(start_cluster, names)
    a, b = cluster[0], cluster[1]
    record = Record(cluster, layer_redis_url)
    carol, dave, bob, alice = [await b.alogin(n) for n in ("carol", "dave", "bob", "alice")]
    for server in cluster.servers[1:]:
        live.append(await open_client(server, alice, f"alice@{server.name}"))
    carol_1 = await open_client(a, carol, "carol-1")
    carol_2 = await open_client(a, carol, "carol-2")
    dave_a = await open_client(a, dave, "dave-a")
    bob_a = await open_client(a, bob, "bob-a")
    dead = [carol_1, carol_2, dave_a, bob_a]
    live.extend(dead)
    await carol_2.request({"join": "room1"}, "joined")
    await dave_a.request({"join": "room2"}, "joined")
    live.append(await open_client(b, dave, "dave-b"))

    mark = await record.mark()
    a.kill()
    killed_at = time.time()
    live.append(await open_client(cluster[survivors], bob, "bob-again"))
    for client in dead:
        assert await client.wait_closed(2) == 1006
    await eventually(
        lambda: record.since(mark),
        lambda ev: (
            len(of(ev, "connection_closed", reason="expired")) >= len(dead)
            and bool(of(ev, "user_offline"))
        ),
        timeout=TTL + ANNOUNCE_WITHIN + 1,
        what="the dead sockets' events",
    )
    await asyncio.sleep(ANNOUNCE_WITHIN)  # any duplicate would be out by now
    events = await record.since(mark)

    assert {e["server"] for e in events} <= set(names[1:]), "the dead server sent events"
    expired = of(events, "connection_closed", reason="expired")
    assert sorted(e["channel"] for e in expired) == sorted(c.channel for c in dead), expired
    assert all(e["at"] <= killed_at + TTL + HEARTBEAT + 1.0 for e in expired), expired
    assert of(events, "connection_closed", reason="disconnected") == []
    assert unordered(about(events, carol.user)) == unordered(
        [("connection_closed", None, "expired")] * 2
        + [
            ("user_left_group", "lobby", None),
            ("user_left_group", "room1", None),
            ("user_offline", None, None),
        ]
    ), about(events, carol.user)
    assert unordered(about(events, dave.user)) == unordered(
        [("connection_closed", None, "expired"), ("user_left_group", "room2", None)]
    ), about(events, dave.user)
    # bob came back on a survivor before his dead socket expired: no offline, no left.
    assert unordered(about(events, bob.user)) == unordered(
        [("connection_closed", None, "expired"), ("connection_opened", None, None)]
    ), about(events, bob.user)
    assert about(events, alice.user) == []
