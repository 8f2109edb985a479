"""The public reads and actions, async first, each with a sync twin.

Call the ``a``-prefixed forms from consumers and other async code, the plain
forms from views, tasks and the shell. Reads only count live connections:
with the Redis store, an entry that missed its heartbeats is excluded at once.
Group names are checked before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from . import events, listeners
from .conf import get_settings
from .exceptions import InvalidCloseCode
from .names import (
    is_close_code,
    pk_parser,
    sorted_pks,
    user_key,
    validate_group_name,
    validate_group_names,
)
from .stores import get_store
from .stores.base import Connection, GroupMember

T = TypeVar("T")

__all__ = [
    "adisconnect_user",
    "agroup_connections",
    "agroup_members",
    "agroup_send",
    "agroup_size",
    "agroup_sizes",
    "agroup_user_count",
    "agroups",
    "ais_online",
    "asweep",
    "auser_channels",
    "auser_connections",
    "await_for_listeners",
    "disconnect_user",
    "group_connections",
    "group_members",
    "group_send",
    "group_size",
    "group_sizes",
    "group_user_count",
    "groups",
    "is_online",
    "sweep",
    "user_channels",
    "user_connections",
    "wait_for_listeners",
]


# Group populations ------------------------------------------------------------


async def agroup_size(group: str, *, max_age: float | None = None) -> int:
    """The number of live connections in ``group``.

    With ``max_age`` (seconds; default ``LISTENERS_MAX_AGE``, 0) above 0 the
    answer may come from this process's cache, read from the store at most
    once per ``max_age`` per group: joins elsewhere show within ``max_age``,
    joins in this process at once. Meant for "is anyone there?" in a hot loop.
    """
    return await listeners.agroup_size(group, max_age=max_age)


def group_size(group: str, *, max_age: float | None = None) -> int:
    """Sync twin of :func:`agroup_size`; it shares the process's cache."""
    return listeners.group_size(group, max_age=max_age)


async def agroup_user_count(group: str) -> int:
    """The number of distinct users with a live connection in ``group``."""
    return await get_store().agroup_user_count(validate_group_name(group))


def group_user_count(group: str) -> int:
    """Sync twin of :func:`agroup_user_count`."""
    return get_store().group_user_count(validate_group_name(group))


async def agroup_sizes(groups: Any) -> dict[str, int]:
    """Live connections of many groups in one call: ``{group: size}``."""
    return await get_store().agroup_sizes(validate_group_names(groups))


def group_sizes(groups: Any) -> dict[str, int]:
    """Sync twin of :func:`agroup_sizes`."""
    return get_store().group_sizes(validate_group_names(groups))


async def agroup_members(group: str) -> list[Any]:
    """The primary keys of the users present in ``group``, sorted.

    Anonymous connections are not users and are not listed.
    """
    return sorted_pks(await get_store().agroup_users(validate_group_name(group)))


def group_members(group: str) -> list[Any]:
    """Sync twin of :func:`agroup_members`."""
    return sorted_pks(get_store().group_users(validate_group_name(group)))


def _members_detail(members: tuple[GroupMember, ...]) -> dict[Any, list[Connection]]:
    parse = pk_parser()
    return {None if m.user is None else parse(m.user): list(m.connections) for m in members}


async def agroup_connections(group: str) -> dict[Any, list[Connection]]:
    """Each user present in ``group`` with their connections there (and metadata).

    Anonymous connections are listed under ``None``.
    """
    return _members_detail(await get_store().agroup_members(validate_group_name(group)))


def group_connections(group: str) -> dict[Any, list[Connection]]:
    """Sync twin of :func:`agroup_connections`."""
    return _members_detail(get_store().group_members(validate_group_name(group)))


async def agroups() -> dict[str, int]:
    """Every group with live connections, with its size."""
    return await get_store().agroups()


def groups() -> dict[str, int]:
    """Sync twin of :func:`agroups`."""
    return get_store().groups()


# Users --------------------------------------------------------------------------


async def auser_connections(user: Any) -> list[Connection]:
    """A user's live connections (a user object or a pk), oldest first."""
    return list(await get_store().auser_connections(user_key(user)))


def user_connections(user: Any) -> list[Connection]:
    """Sync twin of :func:`auser_connections`."""
    return list(get_store().user_connections(user_key(user)))


async def auser_channels(user: Any) -> list[str]:
    """The channel names of a user's live connections, oldest first."""
    return [c.channel_name for c in await auser_connections(user)]


def user_channels(user: Any) -> list[str]:
    """Sync twin of :func:`auser_channels`."""
    return [c.channel_name for c in user_connections(user)]


async def ais_online(user: Any) -> bool:
    """Whether the user has at least one live connection."""
    return bool(await get_store().auser_connections(user_key(user)))


def is_online(user: Any) -> bool:
    """Sync twin of :func:`ais_online`."""
    return bool(get_store().user_connections(user_key(user)))


# Actions ------------------------------------------------------------------------


async def adisconnect_user(
    user: Any, code: int | None = None, *, session: str | None = None
) -> int:
    """Close every live connection of ``user``, on every server.

    With ``session`` (a Django session key), only the connections of that
    session. The connections are removed from presence at once and each is
    sent a ``presence.close`` message with ``code`` (default ``CLOSE_CODE``).
    Returns how many were asked to close.
    """
    return await _disconnect(user, code, session, "kicked")


def disconnect_user(user: Any, code: int | None = None, *, session: str | None = None) -> int:
    """Sync twin of :func:`adisconnect_user`."""
    return async_to_sync(_flushed(adisconnect_user))(user, code, session=session)


def _flushed(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``fn``, then this loop's gathered diffs sent at once.

    A sync twin may run on a loop of its own that ends with the call, so
    nothing may wait for a timer there.
    """

    async def run(*args: Any, **kwargs: Any) -> T:
        result = await fn(*args, **kwargs)
        await events.flush()
        return result

    return run


async def _disconnect(user: Any, code: int | None, session: str | None, reason: str) -> int:
    key = user_key(user)
    close_code = get_settings().CLOSE_CODE if code is None else code
    if not is_close_code(close_code):
        raise InvalidCloseCode(f"code {code!r} must be 1000 or an integer from 3000 to 4999.")
    if session is not None and not isinstance(session, str):
        raise InvalidCloseCode(f"session {session!r} must be a session key (str) or None.")
    departures = await get_store().adisconnect_user(key, session, reason, close_code)
    await events.depart(get_channel_layer(), departures, reason, close_code)
    return len(departures)


async def asweep() -> list[Connection]:
    """Remove every expired entry now (the heartbeats also do it, in batches).

    Swept connections are taken out of their channel-layer groups and get
    their leave events. Returns what was removed.
    """
    departures = await get_store().asweep()
    await events.depart(get_channel_layer(), departures, "expired")
    return [d.connection for d in departures]


def sweep() -> list[Connection]:
    """Sync twin of :func:`asweep`."""
    return async_to_sync(_flushed(asweep))()


async def agroup_send(group: str, message: dict[str, Any], *, max_age: float | None = None) -> int:
    """``channel_layer.group_send`` that skips empty groups.

    Returns how many live connections it was addressed to; 0 means the group
    was empty and the channel layer was not called. Only tracked connections
    count: with ``ANONYMOUS="ignore"``, anonymous listeners alone do not make
    a group non-empty. ``max_age`` is :func:`agroup_size`'s: above 0, a first
    listener on another server gets messages at most ``max_age`` after it
    joined, and a group that emptied costs layer calls for ``max_age`` at most.
    """
    return await listeners.agroup_send(group, message, max_age=max_age)


def group_send(group: str, message: dict[str, Any], *, max_age: float | None = None) -> int:
    """Sync twin of :func:`agroup_send`; a skipped send needs no event loop."""
    return listeners.group_send(group, message, max_age=max_age)


async def await_for_listeners(
    group: str, timeout: float | None = None, *, max_age: float | None = None
) -> bool:
    """Wait until ``group`` has a live connection; ``False`` if ``timeout`` passed first.

    For a hot loop that should do no work while nobody listens. A join in this
    process wakes it at once; one on another server within ``max_age``
    seconds (default ``LISTENERS_MAX_AGE``, or 1 s when that is 0): the store
    is read at most once per ``max_age`` however many tasks wait, and no task
    or timer is left behind. ``timeout=None`` waits as long as it takes.
    """
    return await listeners.await_for_listeners(group, timeout, max_age=max_age)


def wait_for_listeners(
    group: str, timeout: float | None = None, *, max_age: float | None = None
) -> bool:
    """Sync twin of :func:`await_for_listeners`; it blocks the calling thread."""
    return listeners.wait_for_listeners(group, timeout, max_age=max_age)
