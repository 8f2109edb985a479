"""Is anyone listening to a group? Answered from a cache whose age has a bound.

A hot sender (a task publishing frames, prices or readings many times a
second) asks before every message whether its group has anyone in it. Asking
the store each time costs a Redis round trip per message. With ``max_age`` the
answer comes from this process's cache instead, and the store is read again
at most once per ``max_age`` per group however many tasks and threads ask:
callers that find a read under way wait for it instead of starting another.

How old an answer can be, case by case:

* a connection that joins in this process makes its groups non-empty here at
  once (the tracker reports it as soon as the store has recorded it);
* one that joins on another server is seen within ``max_age``;
* a leave in this process lowers the cached count, but never to "empty": the
  last listener here need not be the last one anywhere, so the group is read
  again instead;
* a group that empties on another server is seen empty within ``max_age``.

Ages count from the moment a read was sent, so a slow store cannot stretch
the bound. The cache is process-wide and thread-safe, so the sync twins
(views, tasks, the short-lived loops of ``async_to_sync``) share it with the
event loops. A read under way is a :class:`concurrent.futures.Future`, which
callers on any loop or thread can wait for. Nothing here starts a task or a
timer: the caller that finds an entry too old reads the store itself.

With ``max_age=0`` (``LISTENERS_MAX_AGE``'s default) nothing is cached: every
call reads the store, as it always did.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf import SETTING_NAME, get_settings
from .exceptions import InvalidDuration, InvalidMessage, StoreUnavailable
from .logs import store_failures
from .names import validate_group_name
from .stores import get_store

__all__ = [
    "DEFAULT_WAIT_MAX_AGE",
    "agroup_send",
    "agroup_size",
    "await_for_listeners",
    "group_send",
    "group_size",
    "note_joined",
    "note_left",
    "reset",
    "wait_for_listeners",
]

#: The bound a wait for listeners uses when neither the call nor
#: ``LISTENERS_MAX_AGE`` gives one: it never reads the store more often.
DEFAULT_WAIT_MAX_AGE = 1.0
#: Groups remembered at most; past it the least recently read half is dropped
#: (they are only read again), so many short-lived groups cannot grow memory.
MAX_ENTRIES = 10_000
#: Seconds a blocking caller waits for a read another thread leads before it
#: reads by itself (two loops blocking on each other's reads cannot deadlock).
SHARED_READ_WAIT = 5.0


class _Abandoned(Exception):
    """The caller leading a shared read was cancelled: the others read again."""


@dataclass
class _Entry:
    size: int
    #: ``time.monotonic()`` when the read that produced ``size`` was sent.
    read_at: float


@dataclass
class _Read:
    future: concurrent.futures.Future[int]
    started: float
    thread: int
    generation: int
    #: Joins reported while the read was under way: it may not have seen them.
    joins: int = 0


class ListenerCache:
    """Group sizes read from the store, each with the time of its read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._reads: dict[str, _Read] = {}
        self._waiters: dict[str, set[Callable[[], None]]] = {}
        # Bumped by reset(): reads sent before it do not fill the new cache.
        self._generation = 0

    # Reads ------------------------------------------------------------------

    async def asize(self, group: str, max_age: float) -> int:
        """The size of ``group``, at most ``max_age`` seconds old."""
        while True:
            size, read, lead = self._claim(group, max_age, blocking=False)
            if size is not None:
                return size
            assert read is not None
            if not lead:
                try:
                    return await asyncio.wrap_future(read.future)
                except _Abandoned:
                    continue
            try:
                size = await get_store().agroup_size(group)
            except BaseException as exc:
                self._fail(group, read, exc)
                raise
            return self._finish(group, read, size)

    def size(self, group: str, max_age: float) -> int:
        """Blocking twin of :meth:`asize`."""
        while True:
            size, read, lead = self._claim(group, max_age, blocking=True)
            if size is not None:
                return size
            if read is None:
                return get_store().group_size(group)
            if not lead:
                try:
                    return read.future.result(timeout=SHARED_READ_WAIT)
                except _Abandoned:
                    continue
                except concurrent.futures.TimeoutError:
                    return get_store().group_size(group)
            try:
                size = get_store().group_size(group)
            except BaseException as exc:
                self._fail(group, read, exc)
                raise
            return self._finish(group, read, size)

    def _claim(
        self, group: str, max_age: float, *, blocking: bool
    ) -> tuple[int | None, _Read | None, bool]:
        """A fresh cached size; or the read under way to wait for; or a new read
        to lead (``lead``); or neither, for a blocking caller that must read alone."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(group)
            if entry is not None and now - entry.read_at <= max_age:
                return entry.size, None, False
            read = self._reads.get(group)
            if read is not None:
                if blocking and read.thread == threading.get_ident():
                    # A task of the loop this call blocks leads it: it cannot finish.
                    return None, None, False
                return None, read, False
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
            # Running, so one waiter's cancellation cannot cancel it for the others.
            future.set_running_or_notify_cancel()
            read = _Read(future, now, threading.get_ident(), self._generation)
            self._reads[group] = read
            return None, read, True

    def _finish(self, group: str, read: _Read, size: int) -> int:
        with self._lock:
            if self._reads.get(group) is read:
                del self._reads[group]
            size += read.joins
            if read.generation == self._generation:
                self._entries[group] = _Entry(size, read.started)
                if len(self._entries) > MAX_ENTRIES:
                    self._prune()
            woken = list(self._waiters.get(group, ())) if size else []
        read.future.set_result(size)
        for wake in woken:
            wake()
        return size

    def _fail(self, group: str, read: _Read, exc: BaseException) -> None:
        with self._lock:
            if self._reads.get(group) is read:
                del self._reads[group]
        # A failure is the waiters' too; a cancelled leader only hands over.
        read.future.set_exception(exc if isinstance(exc, Exception) else _Abandoned())

    def _prune(self) -> None:
        by_age = sorted(self._entries.items(), key=lambda item: item[1].read_at)
        for group, _ in by_age[: len(by_age) // 2]:
            del self._entries[group]

    # What this process changed ------------------------------------------------

    def note_joined(self, groups: Iterable[str]) -> None:
        """A connection of this process joined ``groups`` (the store has it)."""
        woken: list[Callable[[], None]] = []
        with self._lock:
            for group in groups:
                entry = self._entries.get(group)
                if entry is not None:
                    entry.size += 1
                read = self._reads.get(group)
                if read is not None:
                    read.joins += 1
                woken.extend(self._waiters.get(group, ()))
        for wake in woken:
            wake()

    def note_left(self, groups: Iterable[str]) -> None:
        """A connection of this process left ``groups`` (the store has it)."""
        with self._lock:
            for group in groups:
                entry = self._entries.get(group)
                if entry is None:
                    continue
                if entry.size > 1:
                    entry.size -= 1
                else:
                    # The last one here, maybe not anywhere: ask the store next time.
                    del self._entries[group]

    # Waiting ------------------------------------------------------------------

    def add_waiter(self, group: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` (from any thread) when ``group`` may have got listeners."""
        with self._lock:
            self._waiters.setdefault(group, set()).add(wake)

    def discard_waiter(self, group: str, wake: Callable[[], None]) -> None:
        with self._lock:
            waiters = self._waiters.get(group)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[group]

    def stale_in(self, group: str, max_age: float) -> float:
        """Seconds until the cached size of ``group`` is older than ``max_age``."""
        with self._lock:
            entry = self._entries.get(group)
        if entry is None:
            return max_age
        return max(0.0, entry.read_at + max_age - time.monotonic())

    def reset(self) -> None:
        """Forget every size (waiters stay); reads under way fill nothing."""
        with self._lock:
            self._entries.clear()
            self._reads.clear()
            self._generation += 1


_cache = ListenerCache()


def note_joined(groups: Iterable[str]) -> None:
    """Report that a connection of this process joined ``groups``.

    Call it once the store has recorded the join: a cached empty group turns
    non-empty at once, and waiters for listeners wake up.
    """
    _cache.note_joined(groups)


def note_left(groups: Iterable[str]) -> None:
    """Report that a connection of this process left ``groups`` (or closed)."""
    _cache.note_left(groups)


def reset() -> None:
    """Forget every cached size; the next call of each group reads the store."""
    _cache.reset()


@receiver(setting_changed)
def _reset_on_change(*, setting: str, **kwargs: Any) -> None:
    # Another store (or prefix) holds other groups.
    if setting in (SETTING_NAME, "CACHES"):
        reset()


# Bounds -----------------------------------------------------------------------


def _seconds(name: str, value: Any, otherwise: str) -> float:
    seconds = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidDuration(
            f"{name}={value!r} is not a bound; it must be a finite number of seconds >= 0, "
            f"or None {otherwise}."
        )
    return seconds


def max_age_of(max_age: Any) -> float:
    """``max_age`` checked, or ``LISTENERS_MAX_AGE`` for ``None``."""
    if max_age is None:
        return get_settings().LISTENERS_MAX_AGE
    return _seconds("max_age", max_age, f"for {SETTING_NAME}['LISTENERS_MAX_AGE']")


def _wait_max_age(max_age: Any) -> float:
    age = max_age_of(max_age)
    if age > 0:
        return age
    if max_age is None:
        return DEFAULT_WAIT_MAX_AGE
    raise InvalidDuration(
        "max_age=0 would have a wait for listeners read the store without pause; "
        "give a bound > 0 (or None for LISTENERS_MAX_AGE, or "
        f"{DEFAULT_WAIT_MAX_AGE:g} s when that is 0)."
    )


def _deadline(timeout: Any, now: float) -> float | None:
    if timeout is None:
        return None
    return now + _seconds("timeout", timeout, "to wait as long as it takes")


def _next_look(group: str, max_age: float, deadline: float | None, now: float) -> float | None:
    """Seconds a waiter sleeps before it asks again (unless woken); None: time is up."""
    delay = _cache.stale_in(group, max_age)
    if deadline is None:
        return delay
    if now >= deadline:
        return None
    return min(delay, deadline - now)


# The API's cores --------------------------------------------------------------


async def agroup_size(group: str, *, max_age: float | None = None) -> int:
    """Live connections in ``group``; from the cache when ``max_age`` > 0."""
    group = validate_group_name(group)
    age = max_age_of(max_age)
    if age == 0:
        return await get_store().agroup_size(group)
    return await _cache.asize(group, age)


def group_size(group: str, *, max_age: float | None = None) -> int:
    """Sync twin of :func:`agroup_size`."""
    group = validate_group_name(group)
    age = max_age_of(max_age)
    if age == 0:
        return get_store().group_size(group)
    return _cache.size(group, age)


def _checked_message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise InvalidMessage(f"message must be a dict with a 'type' string, got {message!r}.")
    return message


def _layer() -> Any:
    layer = get_channel_layer()
    if layer is None:
        raise InvalidMessage("agroup_send needs a channel layer: CHANNEL_LAYERS is not set.")
    return layer


#: The size :func:`agroup_send` returns when the store could not say and the
#: message went to the layer anyway (``ON_STORE_ERROR="allow"``).
UNKNOWN = -1
#: While the store keeps failing, sends skip it for this long between tries,
#: so a hung Redis does not cost every send its socket timeout.
RETRY_STORE_AFTER = 1.0


def _skip_store() -> bool:
    """Whether a send goes out without asking the store: it failed within the
    last :data:`RETRY_STORE_AFTER` seconds and ``ON_STORE_ERROR="allow"`` says
    presence must not stop the site."""
    return store_failures.failing(RETRY_STORE_AFTER) and get_settings().ON_STORE_ERROR == "allow"


def _size_after_failure(exc: StoreUnavailable) -> int:
    """:data:`UNKNOWN` under ``ON_STORE_ERROR="allow"`` (the send goes out);
    otherwise the store's error propagates."""
    if get_settings().ON_STORE_ERROR != "allow":
        raise exc
    store_failures.failed(exc)
    return UNKNOWN


async def agroup_send(group: str, message: dict[str, Any], *, max_age: float | None = None) -> int:
    """The layer's ``group_send``, unless ``group`` is empty; returns its size.

    When the store is unreachable under ``ON_STORE_ERROR="allow"``, the message
    is sent anyway and the result is :data:`UNKNOWN` (-1).
    """
    validate_group_name(group)
    _checked_message(message)
    if _skip_store():
        size = UNKNOWN
    else:
        try:
            size = await agroup_size(group, max_age=max_age)
        except StoreUnavailable as exc:
            size = _size_after_failure(exc)
        else:
            store_failures.succeeded()
    if size:
        await _layer().group_send(group, message)
    return size


def group_send(group: str, message: dict[str, Any], *, max_age: float | None = None) -> int:
    """Sync twin of :func:`agroup_send`; an empty group needs no event loop at all."""
    validate_group_name(group)
    _checked_message(message)
    if _skip_store():
        size = UNKNOWN
    else:
        try:
            size = group_size(group, max_age=max_age)
        except StoreUnavailable as exc:
            size = _size_after_failure(exc)
        else:
            store_failures.succeeded()
    if size:
        async_to_sync(_layer().group_send)(group, message)
    return size


class _LoopWakeup:
    """Wakes a task on ``loop`` from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def arm(self) -> None:
        if self.future.done():
            self.future = self.loop.create_future()

    def wake(self) -> None:
        # The loop may have closed since the waiter registered: nobody to wake.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    async def wait(self, delay: float) -> None:
        await asyncio.wait([self.future], timeout=delay)


async def await_for_listeners(
    group: str, timeout: float | None = None, *, max_age: float | None = None
) -> bool:
    """Wait until ``group`` has a live connection; ``False`` if ``timeout`` passes first."""
    group = validate_group_name(group)
    age = _wait_max_age(max_age)
    loop = asyncio.get_running_loop()
    deadline = _deadline(timeout, loop.time())
    wakeup = _LoopWakeup(loop)
    _cache.add_waiter(group, wakeup.wake)
    try:
        while True:
            wakeup.arm()
            if await _cache.asize(group, age):
                return True
            delay = _next_look(group, age, deadline, loop.time())
            if delay is None:
                return False
            await wakeup.wait(delay)
    finally:
        _cache.discard_waiter(group, wakeup.wake)


def wait_for_listeners(
    group: str, timeout: float | None = None, *, max_age: float | None = None
) -> bool:
    """Sync twin of :func:`await_for_listeners`: blocks this thread."""
    group = validate_group_name(group)
    age = _wait_max_age(max_age)
    deadline = _deadline(timeout, time.monotonic())
    woken = threading.Event()
    _cache.add_waiter(group, woken.set)
    try:
        while True:
            woken.clear()
            if _cache.size(group, age):
                return True
            delay = _next_look(group, age, deadline, time.monotonic())
            if delay is None:
                return False
            woken.wait(delay)
    finally:
        _cache.discard_waiter(group, woken.set)
