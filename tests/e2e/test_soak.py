"""The soak test: hundreds of sockets churning across two servers through a crash
and a Redis restart, and every population exact at the end.

Two uvicorn servers share the presence Redis. 30 users each log in four times
(four browsers: Django sessions) and open tabs, ~240 sockets at once. Under
``MAX_SESSIONS=3`` with ``SESSION_SCOPE="session"`` a user may hold any number of
tabs in at most three browsers; opening a tab in a fourth closes every tab of
the oldest browser with 4001. (With ``SESSION_SCOPE="user"`` 30 users could hold
only 90 sockets; the session scope lets a few dozen users keep a few hundred.)

A schedule drawn from a fixed seed opens and closes tabs, joins and leaves
rooms by client command, and reloads tabs onto either server, in bounded
rounds. Mid-round, server B is SIGKILLed (its tabs reconnect to A, as a browser
retries a 1006) and later restarted; later, mid-round again, the Redis restarts
empty: presence and the channel layer share it, as in production (the layer's
groups and inboxes go with it). No socket may drop for it: consumers wait out
the layer's outage and the heartbeats put presence and the layer's groups back.
After each fault the test measures how long until the servers' counts equal
the truth again.

The truth is the clients' own view: which sockets are open (a hello came,
no close since) and which rooms each joined (a "joined" reply came, no "left"
since). At the end, after TTL and a heartbeat, every group's size, user count
and members, every user's channels and ``groups()`` must equal it; no user has
more than three live sessions, in the store or in open sockets. When every tab
has closed, every count is zero at once, and once the servers' nodes have
lingered (TTL + LEAVE_GRACE) and retired, no presence key is left in Redis but
the expiring markers of nodes counted out.

Bounded: about a minute on two cores; every loop has a count and a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.harness import (
    AsgiServer,
    Cluster,
    LiveClient,
    Login,
    eventually,
    login_many,
    presence_keys,
    raise_fd_limit,
)
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.soak, pytest.mark.e2e, pytest.mark.redis]

SEED = 20240607
USERS = 30
BROWSERS = 4  # logins per user: one more than MAX_SESSIONS
MAX_SESSIONS = 3
TARGET_TABS = 240
ROOMS = tuple(f"room{i}" for i in range(6))
TTL = 2.0
HEARTBEAT = TTL / 3
GRACE = 0.5
ROUNDS = 30
ACTIONS_PER_ROUND = 40
KILL_ROUND = 8
REDIS_ROUND = 18
#: Seconds to open a socket or get a command's reply before the test calls it a hang.
OPEN_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
#: Close codes after which a browser does not reconnect (README).
FINAL_CODES = {4001, 4002, 4003}


@dataclass
class Tab:
    """One browser tab: a login (the browser), its socket, the rooms it joined."""

    login: Login
    client: LiveClient
    rooms: set[str] = field(default_factory=set)
    #: A browser reconnected it after it was dropped.
    retried: bool = False

    @property
    def open(self) -> bool:
        return self.client.is_open


class Browsers:
    """Every tab the schedule opened, and the truth they imply."""

    def __init__(self, cluster: Cluster, logins: dict[str, list[Login]], rng: random.Random):
        self.cluster = cluster
        self.logins = logins
        self.rng = rng
        self.tabs: list[Tab] = []
        self.failed_opens = 0
        self.reconnects = 0
        #: Redis is restarting: an open may fail (the browser retries it later).
        self.outage = False

    def live_servers(self) -> list[AsgiServer]:
        return [s for s in self.cluster if s.running]

    def open_tabs(self) -> list[Tab]:
        return [t for t in self.tabs if t.open]

    async def open(self, login: Login, rooms: set[str], server: AsgiServer | None = None) -> None:
        """Open a tab and join ``rooms``; a server that is down counts as a failed open."""
        servers = self.live_servers()
        if server is None:
            if not servers:
                self.failed_opens += 1
                return
            server = self.rng.choice(servers)
        try:
            client = await LiveClient.open(server, login, timeout=OPEN_TIMEOUT)
        except Exception as exc:
            # Refused or cut off by a server killed meanwhile, or by Redis
            # restarting under the handshake: the browser retries later.
            if server.running and not self.outage:
                raise AssertionError(f"opening a tab on live {server!r} failed: {exc!r}") from exc
            self.failed_opens += 1
            return
        tab = Tab(login, client)
        self.tabs.append(tab)
        for room in sorted(rooms):
            await self.join(tab, room)

    async def join(self, tab: Tab, room: str) -> None:
        if await self._command(tab, {"join": room}, "joined"):
            tab.rooms.add(room)

    async def leave(self, tab: Tab, room: str) -> None:
        if await self._command(tab, {"leave": room}, "left"):
            tab.rooms.discard(room)

    async def _command(self, tab: Tab, payload: dict[str, Any], reply: str) -> bool:
        """Whether the server confirmed; a socket closed meanwhile is no error."""
        if not tab.open:
            return False
        try:
            await tab.client.request(payload, reply, timeout=REPLY_TIMEOUT)
        except Exception:
            # Closed under the command (superseded, crashed, reloaded): no reply is due.
            # A SIGKILL can cut the socket before its reader has noticed, so a
            # tab whose server is down counts as closed too.
            server = next((s for s in self.cluster if s.name == tab.client.server), None)
            if tab.open and (server is None or server.running):
                raise
            return False
        return True

    async def reload(self, tab: Tab) -> None:
        """Close the tab and open it again, maybe on the other server, rejoining its rooms."""
        rooms = set(tab.rooms)
        await tab.client.close()
        await self.open(tab.login, rooms)

    async def retry_dropped(self) -> int:
        """Browsers reconnect tabs closed by anything but a final code (a crash: 1006)."""
        dropped = [
            t
            for t in self.tabs
            if t.client.close_code is not None
            and t.client.close_code not in FINAL_CODES
            and not t.client.closed_by_client
            and not t.retried
        ]
        for tab in dropped:
            tab.retried = True
        await asyncio.gather(*(self.open(t.login, set(t.rooms)) for t in dropped))
        self.reconnects += len(dropped)
        return len(dropped)

    def random_login(self) -> Login:
        user = self.rng.choice(sorted(self.logins))
        # The fourth browser is used least: it is the one that pushes out the oldest.
        return self.rng.choices(self.logins[user], weights=(30, 30, 30, 8))[0]

    def arrival(self) -> Callable[[], Any]:
        """Open a tab in a random browser and join zero to two rooms."""
        rooms = set(self.rng.sample(ROOMS, self.rng.randint(0, 2)))
        return functools.partial(self.open, self.random_login(), rooms)

    def plan_round(self) -> list[Callable[[], Any]]:
        """A round of actions, each on a tab of its own, drawn from the seeded generator."""
        actions: list[Callable[[], Any]] = []
        free = self.open_tabs()
        self.rng.shuffle(free)
        missing = max(0, TARGET_TABS - len(free))
        for _ in range(min(missing, ACTIONS_PER_ROUND // 2)):
            actions.append(self.arrival())
        while len(actions) < ACTIONS_PER_ROUND and free:
            tab = free.pop()
            kind = self.rng.choices(
                ("join", "leave", "close", "reload", "open"), weights=(30, 25, 15, 20, 10)
            )[0]
            if kind == "join":
                room = self.rng.choice(ROOMS)
                actions.append(functools.partial(self.join, tab, room))
            elif kind == "leave" and tab.rooms:
                room = self.rng.choice(sorted(tab.rooms))
                actions.append(functools.partial(self.leave, tab, room))
            elif kind == "close":
                actions.append(tab.client.close)
            elif kind == "reload":
                actions.append(functools.partial(self.reload, tab))
            else:
                actions.append(functools.partial(self.open, self.random_login(), set()))
        return actions

    async def run(self, actions: list[Callable[[], Any]]) -> None:
        await asyncio.gather(*(action() for action in actions))

    # The truth ----------------------------------------------------------------------

    def expected(self, user_pks: list[int]) -> dict[str, Any]:
        """What the store must say, computed from the open tabs."""
        tabs = self.open_tabs()
        groups = {}
        for group in ("lobby", *ROOMS):
            members = [t for t in tabs if group == "lobby" or group in t.rooms]
            users = sorted({t.login.user for t in members})
            groups[group] = {"size": len(members), "users": len(users), "members": users}
        users = {
            str(pk): sorted(t.client.channel for t in tabs if t.login.user == pk) for pk in user_pks
        }
        all_groups = {g: v["size"] for g, v in groups.items() if v["size"]}
        return {"groups": groups, "users": users, "all_groups": all_groups}


def differences(seen: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    """Where the servers' snapshot differs from the truth; empty when exact."""
    if seen is None:
        return ["no snapshot (HTTP error)"]
    out = []
    for group, want in expected["groups"].items():
        got = seen["groups"][group]
        if got != want:
            extra = sorted(set(got["members"]) - set(want["members"]))
            missing = sorted(set(want["members"]) - set(got["members"]))
            out.append(
                f"{group}: size {got['size']} (want {want['size']}), users {got['users']} "
                f"(want {want['users']}), members +{extra} -{missing}"
            )
    for user, want in expected["users"].items():
        got = sorted(seen["users"][user])
        if got != want:
            out.append(f"user {user}: {len(got)} live channels, {len(want)} open tabs")
    if seen["all_groups"] != expected["all_groups"]:
        out.append(f"groups(): {seen['all_groups']} != {expected['all_groups']}")
    return out


async def snapshot(server: AsgiServer, user_pks: list[int]) -> dict[str, Any] | None:
    query = "&".join([f"group={g}" for g in ("lobby", *ROOMS)] + [f"user={pk}" for pk in user_pks])
    response = await server.aget(f"/presence/snapshot/?{query}")
    return response.json() if response.status == 200 else None


async def exact_after(
    browsers: Browsers, user_pks: list[int], since: float, timeout: float, what: str
) -> float:
    """Seconds from ``since`` until a live server's snapshot equals the truth."""

    async def probe() -> list[str]:
        server = browsers.live_servers()[0]
        return differences(await snapshot(server, user_pks), browsers.expected(user_pks))

    await eventually(probe, lambda diff: not diff, timeout=timeout, interval=0.05, what=what)
    return time.monotonic() - since


def _counted_out_marker(key: str, ttl: float) -> bool:
    """A node's hash kept, with an expiry, after its node was counted out."""
    return key.count("/") == 1 and "/n{" in key and ttl > 0


async def layer_groups_exact(cluster: Cluster, browsers: Browsers) -> None:
    """Once the heartbeats have put them back, the layer's groups (on the
    restarted Redis) hold every open tab's channel again: the lobby and its rooms."""
    import redis.asyncio

    want: dict[str, set[str]] = collections.defaultdict(set)
    for tab in browsers.open_tabs():
        for group in ("lobby", *tab.rooms):
            want[group].add(str(tab.client.channel))

    async def held() -> dict[str, set[str]]:
        client = redis.asyncio.Redis.from_url(cluster.config.layer_redis_url)
        try:
            found = {}
            for group in want:
                key = f"{cluster.config.layer_prefix}:group:{group}"
                found[group] = {m.decode() for m in await client.zrange(key, 0, -1)}
            return found
        finally:
            await client.aclose()

    await eventually(
        held,
        lambda found: all(want[g] <= found[g] for g in want),
        timeout=3 * HEARTBEAT + 10.0,
        interval=0.25,
        what="every open tab back in its layer groups",
    )


async def test_soak_two_servers_sigkill_and_redis_restart_leave_exact_populations(
    start_cluster: Callable[..., Cluster],
    create_users: Callable[..., dict[str, int]],
    redis_server: RedisServer | None,
    redis_url: str,
) -> None:
    """See the module docstring: churn, a SIGKILL and a Redis restart; exact at the end."""
    if redis_server is None:
        pytest.skip("REDIS_URL is set externally: the soak test must restart Redis")
    began = time.monotonic()
    raise_fd_limit(4096)
    rng = random.Random(SEED)
    names = [f"soak{i:02d}" for i in range(USERS)]
    pks = await asyncio.to_thread(create_users, names)
    cluster = await asyncio.to_thread(
        functools.partial(
            start_cluster,
            {
                "MAX_SESSIONS": MAX_SESSIONS,
                "SESSION_SCOPE": "session",
                "TTL": TTL,
                "LEAVE_GRACE": GRACE,
                "ON_STORE_ERROR": "allow",
            },
            # One Redis for presence and the channel layer: its restart hits both.
            layer_redis_url=redis_url,
        )
    )
    a, b = cluster
    all_logins = await asyncio.to_thread(login_many, a, [n for n in names for _ in range(BROWSERS)])
    logins: dict[str, list[Login]] = collections.defaultdict(list)
    for login in all_logins:
        logins[login.username].append(login)
    user_pks = sorted(pks[n] for n in names)
    browsers = Browsers(cluster, dict(logins), rng)
    figures: dict[str, Any] = {}

    try:
        # Everyone arrives, in waves of 40 so the servers are busy but not swamped.
        for _ in range(TARGET_TABS // 40):
            await browsers.run([browsers.arrival() for _ in range(40)])
        figures["tabs_after_arrival"] = len(browsers.open_tabs())

        for round_no in range(ROUNDS):
            actions = browsers.plan_round()
            work = asyncio.ensure_future(browsers.run(actions))
            if round_no == KILL_ROUND:
                await asyncio.sleep(0.1)
                b.kill()
                killed_at = time.monotonic()
                await work
                await asyncio.sleep(0.2)  # the 1006s reach every tab of B
                figures["tabs_dropped_by_kill"] = await browsers.retry_dropped()
                figures["recovery_after_sigkill_s"] = await exact_after(
                    browsers, user_pks, killed_at, TTL + 2 * HEARTBEAT + 3.0, "exact after SIGKILL"
                )
                await asyncio.to_thread(b.start)
            elif round_no == REDIS_ROUND:
                standing = browsers.open_tabs()
                await asyncio.sleep(0.1)
                browsers.outage = True
                await asyncio.to_thread(redis_server.restart)
                restarted_at = time.monotonic()
                await work
                # Generous: a close asked through the layer during the outage
                # is forced by its server's heartbeat (HEARTBEAT + 2 s).
                figures["recovery_after_redis_restart_s"] = await exact_after(
                    browsers, user_pks, restarted_at, TTL + 10.0, "exact after Redis restart"
                )
                browsers.outage = False
                # Not one socket dropped for it (a round's own closes and 4001s aside).
                dropped = [
                    t.client
                    for t in standing
                    if not t.open
                    and not t.client.closed_by_client
                    and t.client.close_code not in FINAL_CODES
                ]
                assert dropped == [], f"sockets dropped by the Redis restart: {dropped}"
                figures["tabs_through_redis_restart"] = sum(t.open for t in standing)
                await layer_groups_exact(cluster, browsers)
            else:
                await work
            await browsers.retry_dropped()
            await asyncio.sleep(rng.uniform(0.1, 0.4))

        # Quiet: let every close in flight land, then wait out TTL and one heartbeat.
        await asyncio.sleep(TTL + HEARTBEAT)
        await exact_after(browsers, user_pks, time.monotonic(), 2.0, "exact at the end")
        tabs = browsers.open_tabs()
        for server in cluster:
            seen = await snapshot(server, user_pks)
            assert differences(seen, browsers.expected(user_pks)) == [], server.name
        assert seen is not None
        channel_session = {t.client.channel: t.client.session for t in browsers.tabs}
        for pk in user_pks:
            open_sessions = {t.client.session for t in tabs if t.login.user == pk}
            live_sessions = {channel_session[c] for c in seen["users"][str(pk)]}
            assert len(open_sessions) <= MAX_SESSIONS, f"user {pk}: {len(open_sessions)} browsers"
            assert len(live_sessions) <= MAX_SESSIONS, f"user {pk}: {len(live_sessions)} sessions"
        codes = collections.Counter(
            t.client.close_code for t in browsers.tabs if not t.client.closed_by_client
        )
        figures.update(
            tabs_opened=len(browsers.tabs),
            tabs_open_at_end=len(tabs),
            failed_opens=browsers.failed_opens,
            reconnects=browsers.reconnects,
            close_codes=dict(sorted(codes.items(), key=str)),
            lobby_at_end=seen["groups"]["lobby"],
        )
        assert set(codes) <= {None, 4001, 1006}, f"unexpected close codes {codes}"

        # Everyone leaves: zero everywhere, then no key at all.
        await asyncio.gather(*(t.client.close() for t in browsers.tabs))
        closed_at = time.monotonic()
        zero = {
            "groups": {g: {"size": 0, "users": 0, "members": []} for g in ("lobby", *ROOMS)},
            "users": {str(pk): [] for pk in user_pks},
            "all_groups": {},
        }
        await eventually(
            lambda: snapshot(a, user_pks),
            lambda s: not differences(s, zero),
            timeout=2.0,
            what="zero after every tab closed",
        )
        # Nothing of a user or a group is left; what may remain a while is the
        # nodes' own (lingering TTL + LEAVE_GRACE, then retired), the departures
        # pending their grace, and the expiring markers of nodes counted out.
        prefix = cluster.config.key_prefix
        left = await asyncio.to_thread(presence_keys, redis_url, prefix)
        strays = sorted(k for k in left if k.startswith((f"{prefix}/u", f"{prefix}/g")))
        assert strays == [], f"keys of users or groups left: {strays}"
        await eventually(
            lambda: asyncio.to_thread(presence_keys, redis_url, prefix),
            lambda keys: all(_counted_out_marker(k, ttl) for k, ttl in keys.items()),
            timeout=TTL + GRACE + 2 * HEARTBEAT + 5.0,
            interval=0.25,
            what="no presence key left but markers of nodes counted out",
        )
        figures["keys_gone_after_s"] = round(time.monotonic() - closed_at, 2)
    finally:
        # On a failure too: no socket of this test outlives it into the next one.
        await asyncio.gather(*(t.client.close() for t in browsers.tabs))
        figures["wall_s"] = round(time.monotonic() - began, 1)
        sys.stderr.write(f"\nsoak figures: {figures}\n")
    print(f"\nsoak figures: {figures}")
