"""``manage.py presence``: look at live presence, and act on it, from a shell.

Sub-commands::

    presence groups                     every group with live connections
    presence group <name>               who is in a group, one row per connection
    presence user <pk>                  a user's live connections
    presence disconnect <pk> [--code N] close every socket of a user
    presence sweep                      remove expired entries now

Each prints an aligned table, or JSON with ``--json`` (stdout carries only the
JSON; notes go to stderr). Session keys are never printed whole: only their
first 8 characters, enough to tell two browsers apart.

The command reads the same store as your ASGI servers only when presence
lives in a shared cache (Redis). With the embedded local-memory store, it sees
the presence of its own process, which is empty.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from channels_presence import api
from channels_presence.conf import get_settings
from channels_presence.exceptions import PresenceError
from channels_presence.names import user_key, user_pk
from channels_presence.stores import PER_PROCESS_BACKENDS, cache_config
from channels_presence.stores.base import Connection

#: How much of a session key is shown: enough to tell sessions apart, too
#: little to hijack one.
SESSION_PREFIX_LENGTH = 8
EMPTY = "-"


# Formatting ---------------------------------------------------------------------


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so no value can drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _width(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK) characters take two."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()
) -> str:
    """Rows as aligned columns under ``headers``; columns in ``right`` right-aligned."""
    cells = [[_printable(str(h)) for h in headers]]
    cells += [[_printable(str(value)) for value in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    right_aligned = set(right)
    lines = []
    for row in cells:
        parts = []
        for i, value in enumerate(row):
            pad = " " * (widths[i] - _width(value))
            parts.append(pad + value if i in right_aligned else value + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_age(seconds: float) -> str:
    """A short duration: ``42s``, ``3m05s``, ``2h07m``, ``4d01h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _iso(timestamp: float) -> str | None:
    if timestamp <= 0:  # a store that did not record the time
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def _age(timestamp: float, now: float) -> float | None:
    return None if timestamp <= 0 else round(max(0.0, now - timestamp), 3)


def _session_prefix(session: str | None) -> str | None:
    return None if session is None else session[:SESSION_PREFIX_LENGTH]


def _compact_json(value: Any) -> str:
    # ASCII-only: metadata may carry what a client sent; keep it inert on a terminal.
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _pk_order(pk: Any) -> tuple[int, int, str]:
    """Sort users: integer pks numerically, then other pks as text, anonymous last."""
    if pk is None:
        return (2, 0, "")
    if isinstance(pk, int) and not isinstance(pk, bool):
        return (0, pk, "")
    return (1, 0, str(pk))


def _show(value: Any) -> str:
    return EMPTY if value is None else str(value)


# The command -----------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "Inspect and act on live websocket presence: list groups, who is in a group, a "
        "user's connections; disconnect a user; sweep expired entries. Add --json to any "
        "sub-command for machine-readable output."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        common = CommandParser(add_help=False)
        common.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print JSON (stable keys) on stdout instead of a table.",
        )
        commands = parser.add_subparsers(
            dest="subcommand", metavar="<sub-command>", title="sub-commands", required=True
        )

        def add(name: str, handler: Callable[..., None]) -> argparse.ArgumentParser:
            doc = inspect.cleandoc(handler.__doc__ or "")
            sub: argparse.ArgumentParser = commands.add_parser(
                name,
                parents=[common],
                help=doc.splitlines()[0],
                description=doc,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            sub.set_defaults(handler=handler)
            return sub

        add("groups", self.show_groups)
        add("group", self.show_group).add_argument(
            "group", metavar="name", help="The group name, as the consumers use it."
        )
        add("user", self.show_user).add_argument(
            "pk", help="The user's primary key (its str(), as with any key type)."
        )
        disconnect = add("disconnect", self.disconnect)
        disconnect.add_argument("pk", help="The user's primary key.")
        disconnect.add_argument(
            "--code",
            type=int,
            default=None,
            help="Websocket close code: 1000 or 3000-4999 (default: CLOSE_CODE, 4001).",
        )
        add("sweep", self.sweep)

    def handle(self, *args: Any, **options: Any) -> None:
        handler: Callable[..., None] = options["handler"]
        self.as_json: bool = options["as_json"]
        try:
            handler(**options)
        except PresenceError as exc:
            # InvalidGroupName, InvalidUser, StoreUnavailable: their message says it all.
            raise CommandError(str(exc)) from exc

    # Output -------------------------------------------------------------------------

    def emit_json(self, payload: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(payload, indent=2, default=str))

    def note_if_per_process(self) -> None:
        """Explain an empty answer that comes from a store this process alone sees."""
        alias = get_settings().CACHE
        backend = cache_config(alias).get("BACKEND", "")
        if backend in PER_PROCESS_BACKENDS:
            self.stderr.write(
                f"note: presence lives in cache {alias!r} ({backend.rsplit('.', 1)[-1]}), "
                "which is private to each process; this command cannot see the "
                "connections of your ASGI servers. Use a Redis cache to inspect them."
            )

    def usernames(self, pks: Iterable[Any]) -> dict[Any, str]:
        """Usernames of the users that exist, in one query; ``{}`` if the lookup fails."""
        wanted = sorted({pk for pk in pks if pk is not None}, key=_pk_order)
        if not wanted:
            return {}
        try:
            from django.contrib.auth import get_user_model

            found = get_user_model()._default_manager.in_bulk(wanted)
        except (DatabaseError, ImproperlyConfigured, ValidationError, ValueError) as exc:
            # Presence is still worth showing when the database is not.
            self.stderr.write(f"usernames not shown: {type(exc).__name__}: {exc}")
            return {}
        return {pk: user.get_username() for pk, user in found.items()}

    # Sub-commands -------------------------------------------------------------------

    def show_groups(self, **options: Any) -> None:
        """List every group with live connections: its connections and distinct users.

        One row per group, sorted by name.
        """
        sizes = api.groups()
        rows = [
            {"group": name, "size": size, "user_count": api.group_user_count(name)}
            for name, size in sorted(sizes.items())
        ]
        if not rows:
            self.note_if_per_process()
        if self.as_json:
            self.emit_json({"groups": rows})
            return
        if not rows:
            self.stdout.write("no groups with live connections")
            return
        self.stdout.write(
            format_table(
                ["GROUP", "CONNECTIONS", "USERS"],
                [(r["group"], r["size"], r["user_count"]) for r in rows],
                right=(1, 2),
            )
        )

    def show_group(self, *, group: str, **options: Any) -> None:
        """Show who is in a group: one row per live connection.

        Columns: user pk (- for anonymous), username when the user model has that
        user, channel name, connected since (UTC) and for how long, metadata as
        compact JSON.
        """
        members = api.group_connections(group)
        now = time.time()
        names = self.usernames(members)
        rows = [
            {
                "user": pk,
                "username": names.get(pk),
                "channel": conn.channel_name,
                "connected_at": conn.connected_at,
                "connected_since": _iso(conn.connected_at),
                "age_seconds": _age(conn.connected_at, now),
                "meta": conn.meta,
            }
            for pk in sorted(members, key=_pk_order)
            for conn in members[pk]
        ]
        user_count = sum(1 for pk in members if pk is not None)
        if not rows:
            self.note_if_per_process()
        if self.as_json:
            self.emit_json(
                {"group": group, "size": len(rows), "user_count": user_count, "connections": rows}
            )
            return
        if not rows:
            self.stdout.write(f"no live connections in group {group!r}")
            return
        self.stdout.write(
            format_table(
                ["USER", "USERNAME", "CHANNEL", "SINCE (UTC)", "AGE", "META"],
                [
                    (
                        _show(r["user"]),
                        _show(r["username"]),
                        r["channel"],
                        _show(r["connected_since"]),
                        EMPTY if r["age_seconds"] is None else format_age(r["age_seconds"]),
                        EMPTY if r["meta"] is None else _compact_json(r["meta"]),
                    )
                    for r in rows
                ],
            )
        )
        self.stdout.write(
            f"{len(rows)} connection{'s' if len(rows) != 1 else ''}, "
            f"{user_count} user{'s' if user_count != 1 else ''}"
        )

    def show_user(self, *, pk: str, **options: Any) -> None:
        """Show a user's live connections, oldest first.

        Columns: channel name, connected since (UTC) and for how long, groups,
        the first 8 characters of the Django session key, metadata.
        """
        connections = api.user_connections(pk)
        now = time.time()
        rows = [self._connection_row(conn, now) for conn in connections]
        if not rows:
            self.note_if_per_process()
        if self.as_json:
            self.emit_json({"user": user_pk(user_key(pk)), "connections": rows})
            return
        if not rows:
            self.stdout.write(f"user {pk} has no live connections")
            return
        self.stdout.write(
            format_table(
                ["CHANNEL", "SINCE (UTC)", "AGE", "GROUPS", "SESSION", "META"],
                [
                    (
                        r["channel"],
                        _show(r["connected_since"]),
                        EMPTY if r["age_seconds"] is None else format_age(r["age_seconds"]),
                        ",".join(r["groups"]) or EMPTY,
                        _show(r["session_prefix"]),
                        EMPTY if r["meta"] is None else _compact_json(r["meta"]),
                    )
                    for r in rows
                ],
            )
        )

    @staticmethod
    def _connection_row(conn: Connection, now: float) -> dict[str, Any]:
        return {
            "channel": conn.channel_name,
            "connected_at": conn.connected_at,
            "connected_since": _iso(conn.connected_at),
            "age_seconds": _age(conn.connected_at, now),
            "groups": list(conn.groups),
            "session_prefix": _session_prefix(conn.session),
            "meta": conn.meta,
        }

    def disconnect(self, *, pk: str, code: int | None, **options: Any) -> None:
        """Close every live connection of a user, on every server.

        Each socket is closed with --code (default: the CLOSE_CODE setting,
        4001, which browsers should read as "signed in elsewhere"). Prints how
        many connections were asked to close.
        """
        try:
            closed = api.disconnect_user(pk, code=code)
        except ValueError as exc:  # a close code out of range
            raise CommandError(str(exc)) from exc
        if code is None:
            code = get_settings().CLOSE_CODE
        if not closed:
            self.note_if_per_process()
        if self.as_json:
            self.emit_json({"user": user_pk(user_key(pk)), "closed": closed, "code": code})
            return
        if not closed:
            self.stdout.write(f"user {pk} has no live connections; nothing to close")
            return
        self.stdout.write(
            f"closed {closed} connection{'s' if closed != 1 else ''} of user {pk} (code {code})"
        )

    def sweep(self, **options: Any) -> None:
        """Remove expired entries now: connections whose server stopped refreshing them.

        The heartbeats of running servers do this too, in batches; this does it
        all at once. Prints how many entries were removed.
        """
        swept = api.sweep()
        if not swept:
            self.note_if_per_process()
        if self.as_json:
            self.emit_json(
                {
                    "swept": len(swept),
                    "connections": [
                        {"channel": c.channel_name, "user": user_pk(c.user)} for c in swept
                    ],
                }
            )
            return
        self.stdout.write(f"swept {len(swept)} expired connection{'s' if len(swept) != 1 else ''}")
