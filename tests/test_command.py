"""``manage.py presence``: tables and JSON an operator can read, actions that act."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import URLRouter
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import path

import channels_presence as presence
from channels_presence.consumers import PresenceConsumerMixin
from channels_presence.middleware import PresenceMiddleware
from channels_presence.stores import get_store
from channels_presence.stores.base import Connection, SessionPolicy
from tests.redis_server import free_port
from tests.test_consumers import closed_with, still_open

ROOT = Path(__file__).resolve().parent.parent
SESSION_KEY = "abcdefghijklmnopqrstuvwxyz012345"


class DeviceConsumer(PresenceConsumerMixin, AsyncJsonWebsocketConsumer):
    """Joins "devices" and records the ``?device=`` of its URL as metadata."""

    presence_groups = ["devices"]

    def get_presence_meta(self) -> dict[str, Any] | None:
        query = parse_qs(self.scope["query_string"].decode())
        return {"device": query["device"][0]} if "device" in query else None


device_app = PresenceMiddleware(URLRouter([path("ws/device/", DeviceConsumer.as_asgi())]))


async def presence_command(*args: str) -> tuple[str, str]:
    """Run ``manage.py presence *args``; return its stdout and stderr."""
    out, err = StringIO(), StringIO()
    # The sync API twins cannot run inside this test's event loop: a thread can.
    await sync_to_async(call_command)("presence", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


async def presence_json(*args: str) -> Any:
    out, _ = await presence_command(*args, "--json")
    return json.loads(out)


def table(text: str) -> list[list[str]]:
    """The rows of a printed table, split on the two-space column gaps."""
    return [re.split(r" {2,}", line.strip()) for line in text.splitlines()]


def column_starts(line: str) -> list[int]:
    return [m.start() for m in re.finditer(r"(?:^| {2})(\S)", line)]


# groups -------------------------------------------------------------------------


async def test_groups_lists_each_group_with_connections_and_users(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    first = await ws(user=1)
    await ws(user=1)
    await ws(user=2)
    await first.send_json_to({"join": "room-b"})
    assert await first.receive_json_from() == {"joined": "room-b"}

    out, err = await presence_command("groups")

    assert out == (
        "GROUP   CONNECTIONS  USERS\nlobby             3      2\nroom-b            1      1\n"
    )
    assert err == ""
    assert await presence_json("groups") == {
        "groups": [
            {"group": "lobby", "size": 3, "user_count": 2},
            {"group": "room-b", "size": 1, "user_count": 1},
        ]
    }


async def test_empty_state_prints_a_friendly_line_and_explains_local_memory() -> None:
    out, err = await presence_command("groups")

    assert out == "no groups with live connections\n"
    # The embedded store is per process: say why a separate process sees nothing.
    assert "LocMemCache" in err
    assert "Redis" in err
    assert await presence_json("groups") == {"groups": []}


async def test_json_output_is_only_json_even_with_a_note_on_stderr() -> None:
    out, err = await presence_command("group", "nobody-here", "--json")

    assert json.loads(out) == {
        "group": "nobody-here",
        "size": 0,
        "user_count": 0,
        "connections": [],
    }
    assert err.startswith("note:")


# group ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_group_shows_a_row_per_connection_with_usernames_and_metadata(
    ws: Any, presence_settings: Any
) -> None:
    from django.contrib.auth import get_user_model

    presence_settings(MAX_SESSIONS=None, ANONYMOUS="track")
    alice = await sync_to_async(get_user_model().objects.create_user)(username="alice")
    await ws("/ws/device/?device=phone", user=alice.pk, app=device_app)
    await ws("/ws/device/?device=laptop", user=alice.pk, app=device_app)
    await ws("/ws/device/", user=999_999, app=device_app)  # no such user in the database
    await ws("/ws/device/?device=kiosk", user=None, app=device_app)
    channels_of_alice = await presence.auser_channels(alice.pk)

    out, err = await presence_command("group", "devices")

    assert err == ""
    lines = out.splitlines()
    header, rows, summary = lines[0], lines[1:-1], lines[-1]
    assert table(header)[0] == ["USER", "USERNAME", "CHANNEL", "SINCE (UTC)", "AGE", "META"]
    # Alice's two (oldest first), then the unknown user, then the anonymous one.
    cells = table("\n".join(rows))
    assert [row[:3] for row in cells] == [
        [str(alice.pk), "alice", channels_of_alice[0]],
        [str(alice.pk), "alice", channels_of_alice[1]],
        ["999999", "-", cells[2][2]],
        ["-", "-", cells[3][2]],
    ]
    assert [row[5] for row in cells] == [
        '{"device":"phone"}',
        '{"device":"laptop"}',
        "-",
        '{"device":"kiosk"}',
    ]
    for row in cells:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row[3]), row
        assert re.fullmatch(r"\d+s", row[4]), row
    # Every column starts where its header does.
    for line in rows:
        assert column_starts(line) == column_starts(header), (header, line)
    assert summary == "4 connections, 2 users"

    report = await presence_json("group", "devices")
    assert (report["group"], report["size"], report["user_count"]) == ("devices", 4, 2)
    first = report["connections"][0]
    assert list(first) == [
        "user",
        "username",
        "channel",
        "connected_at",
        "connected_since",
        "age_seconds",
        "meta",
    ]
    assert (first["user"], first["username"], first["channel"]) == (
        alice.pk,
        "alice",
        channels_of_alice[0],
    )
    assert first["meta"] == {"device": "phone"}
    assert abs(first["connected_at"] - time.time()) < 60
    assert 0 <= first["age_seconds"] < 60
    assert [(c["user"], c["username"]) for c in report["connections"][2:]] == [
        (999_999, None),
        (None, None),
    ]


async def test_group_still_shows_presence_when_the_database_fails(
    ws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.contrib.auth import get_user_model
    from django.db import OperationalError

    def database_down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(get_user_model()._default_manager, "in_bulk", database_down)
    await ws(user=3)

    out, err = await presence_command("group", "lobby")

    assert table(out)[1][:2] == ["3", "-"]
    assert err == "usernames not shown: OperationalError: could not connect to server\n"


async def test_group_empty_says_so(ws: Any) -> None:
    await ws(user=1)
    out, _ = await presence_command("group", "elsewhere")
    assert out == "no live connections in group 'elsewhere'\n"


@pytest.mark.parametrize("bad", ["a b", "é", "x" * 100])
async def test_bad_group_name_is_a_command_error_naming_it(bad: str) -> None:
    with pytest.raises(CommandError, match=r"Group name .* (may contain only|characters long)"):
        await presence_command("group", bad)


# user -------------------------------------------------------------------------------


async def test_user_lists_connections_with_only_8_characters_of_the_session(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    first = await ws(user=5, session=SESSION_KEY)
    await ws(user=5, session=None)
    await first.send_json_to({"join": "room-b"})
    assert await first.receive_json_from() == {"joined": "room-b"}
    channels = await presence.auser_channels(5)

    out, _ = await presence_command("user", "5")

    cells = table(out)
    assert cells[0] == ["CHANNEL", "SINCE (UTC)", "AGE", "GROUPS", "SESSION", "META"]
    assert [(row[0], row[3], row[4]) for row in cells[1:]] == [
        (channels[0], "lobby,room-b", "abcdefgh"),
        (channels[1], "lobby", "-"),
    ]
    report = await presence_json("user", "5")
    assert report["user"] == 5
    assert [(c["channel"], c["groups"], c["session_prefix"]) for c in report["connections"]] == [
        (channels[0], ["lobby", "room-b"], "abcdefgh"),
        (channels[1], ["lobby"], None),
    ]
    for text in (out, json.dumps(report)):
        assert "abcdefghi" not in text  # never more of the key than 8 characters


async def test_user_without_connections_says_so() -> None:
    out, _ = await presence_command("user", "42")
    assert out == "user 42 has no live connections\n"


async def test_user_with_an_impossible_key_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="1 to 255 characters"):
        await presence_command("user", "x" * 300)


# disconnect -------------------------------------------------------------------------


async def test_disconnect_closes_every_socket_of_the_user_with_4001(
    ws: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    a = await ws(user=1)
    b = await ws(user=1)
    other = await ws(user=2)

    out, _ = await presence_command("disconnect", "1")

    assert out == "closed 2 connections of user 1 (code 4001)\n"
    await closed_with(a, 4001)
    await closed_with(b, 4001)
    await still_open(other)
    assert not await presence.ais_online(1)
    out, _ = await presence_command("disconnect", "1")
    assert out == "user 1 has no live connections; nothing to close\n"


async def test_disconnect_with_a_code_and_json(ws: Any) -> None:
    comm = await ws(user=7)

    report = await presence_json("disconnect", "7", "--code", "4005")

    assert report == {"user": 7, "closed": 1, "code": 4005}
    assert await closed_with(comm, 4005) == [
        {"type": "session.superseded", "reason": "kicked", "code": 4005}
    ]


async def test_disconnect_refuses_a_bad_code_and_closes_nothing(ws: Any) -> None:
    comm = await ws(user=1)
    with pytest.raises(CommandError, match="code 99 must be 1000 or an integer from 3000"):
        await presence_command("disconnect", "1", "--code", "99")
    await still_open(comm)


# sweep ------------------------------------------------------------------------------


async def test_sweep_removes_expired_entries_and_counts_them(presence_settings: Any) -> None:
    presence_settings(TTL=1)
    # A connection whose server died: recorded, then never refreshed.
    dead = Connection("dead!1", "8", None, time.time(), ("lobby",), conn_id="deadnode.1")
    get_store().connect(dead, SessionPolicy(max_sessions=None))
    assert await presence_json("groups") == {
        "groups": [{"group": "lobby", "size": 1, "user_count": 1}]
    }
    await asyncio.sleep(1.1)

    out, _ = await presence_command("sweep")

    assert out == "swept 1 expired connection\n"
    assert await presence_json("sweep") == {"swept": 0, "connections": []}
    out, _ = await presence_command("groups")
    assert out == "no groups with live connections\n"


async def test_sweep_json_names_what_it_removed(presence_settings: Any) -> None:
    presence_settings(TTL=1)
    get_store().connect(
        Connection("dead!2", "9", None, time.time(), ("lobby",), conn_id="deadnode.2"),
        SessionPolicy(max_sessions=None),
    )
    await asyncio.sleep(1.1)
    assert await presence_json("sweep") == {
        "swept": 1,
        "connections": [{"channel": "dead!2", "user": 9}],
    }


# Bad input, exit codes ----------------------------------------------------------------


async def test_unknown_sub_command_is_refused_with_the_choices() -> None:
    with pytest.raises(CommandError, match=r"invalid choice: 'nope'.*'groups'"):
        await presence_command("nope")


def run_manage(tmp_path: Path, *args: str, settings: str = "") -> subprocess.CompletedProcess[str]:
    """``django-admin presence *args`` in a fresh process, on the test settings."""
    (tmp_path / "cli_settings.py").write_text("from tests.settings import *  # noqa\n" + settings)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cli_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", "presence", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


def test_from_the_shell_a_bad_sub_command_prints_usage_and_exits_2(tmp_path: Path) -> None:
    result = run_manage(tmp_path, "nope")
    assert result.returncode == 2
    assert result.stderr.startswith("usage:")
    assert "invalid choice: 'nope'" in result.stderr
    assert result.stdout == ""


def test_from_the_shell_a_bad_group_name_exits_1_with_the_message(tmp_path: Path) -> None:
    result = run_manage(tmp_path, "group", "a b")
    assert result.returncode == 1
    assert "Group name 'a b' may contain only ASCII letters" in result.stderr


def redis_store_or_skip() -> None:
    try:
        import channels_presence.stores.redis  # noqa: F401
    except Exception as exc:  # still being written: say so instead of failing
        pytest.skip(f"the Redis store does not import yet: {type(exc).__name__}: {exc}")


def test_unreachable_store_exits_1_with_the_store_message(tmp_path: Path) -> None:
    redis_store_or_skip()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = run_manage(
        tmp_path,
        "groups",
        "--json",
        settings=(
            f"CACHES = {{'default': {{'BACKEND': 'django_redis.cache.RedisCache', "
            f"'LOCATION': {url!r}}}}}\n"
        ),
    )
    assert result.returncode == 1, result
    assert "CommandError: Redis at" in result.stderr
    assert "is unreachable" in result.stderr
    assert result.stdout == ""


# The Redis store ---------------------------------------------------------------------


@pytest.mark.redis
async def test_every_sub_command_on_the_redis_store(
    ws: Any, request: pytest.FixtureRequest, key_prefix: str
) -> None:
    redis_store_or_skip()
    redis_url = request.getfixturevalue("redis_url")
    with override_settings(
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}},
        CHANNELS_PRESENCE={"KEY_PREFIX": key_prefix, "MAX_SESSIONS": None},
    ):
        a = await ws(user=1, session=SESSION_KEY)
        b = await ws(user=1)
        other = await ws(user=2)
        channels = await presence.auser_channels(1)

        out, _ = await presence_command("groups")
        assert table(out) == [["GROUP", "CONNECTIONS", "USERS"], ["lobby", "3", "2"]]

        report = await presence_json("group", "lobby")
        assert (report["size"], report["user_count"]) == (3, 2)
        assert [(c["user"], c["channel"]) for c in report["connections"]][:2] == [
            (1, channels[0]),
            (1, channels[1]),
        ]
        assert report["connections"][2]["user"] == 2

        report = await presence_json("user", "1")
        assert [c["session_prefix"] for c in report["connections"]] == ["abcdefgh", None]

        out, _ = await presence_command("disconnect", "1", "--code", "4002")
        assert out == "closed 2 connections of user 1 (code 4002)\n"
        await closed_with(a, 4002)
        await closed_with(b, 4002)
        await still_open(other)
        assert await presence_json("groups") == {
            "groups": [{"group": "lobby", "size": 1, "user_count": 1}]
        }
        assert await presence_json("sweep") == {"swept": 0, "connections": []}
        await other.disconnect()
