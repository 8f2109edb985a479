"""Settings: defaults, validation with clear errors, typed access.

Everything lives in one dict, ``settings.CHANNELS_PRESENCE``; every key is
optional. Values are read lazily and validated as a whole the first time they
are used (and by the system checks at startup), so a typo is reported with
the key, the value and what would be right, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .exceptions import InvalidGroupName
from .names import is_close_code, validate_group_names

SETTING_NAME = "CHANNELS_PRESENCE"

_SESSION_SCOPES = ("user", "session")
_ON_LIMIT = ("close_oldest", "reject_new")
_ANONYMOUS = ("ignore", "track")
_ON_STORE_ERROR = ("allow", "reject")
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:{}\-]{1,64}")
#: Groups the metrics may read each interval: the reads stay bounded.
MAX_METRICS_GROUPS = 100


@dataclass(frozen=True)
class PresenceSettings:
    """The validated ``CHANNELS_PRESENCE`` settings."""

    CACHE: str = "default"
    MAX_SESSIONS: int | None = 1
    SESSION_SCOPE: str = "user"
    ON_LIMIT: str = "close_oldest"
    CLOSE_CODE: int = 4001
    REJECT_CODE: int = 4003
    LOGOUT_CODE: int = 4002
    TTL: float = 60.0
    HEARTBEAT: float = 20.0
    ANONYMOUS: str = "ignore"
    KEY_PREFIX: str = "presence"
    ON_STORE_ERROR: str = "allow"
    LEAVE_GRACE: float = 3.0
    DIFF_INTERVAL: float = 1.0
    DISCONNECT_ON_LOGOUT: bool | str = True
    METADATA_MAX_BYTES: int = 1024
    MAX_CONNECTIONS_PER_USER: int | None = 1000
    MAX_GROUPS_PER_CONNECTION: int = 128
    LISTENERS_MAX_AGE: float = 0.0
    METRICS_GROUPS: tuple[str, ...] = ()
    METRICS_INTERVAL: float = 15.0
    #: The presence cache is a Redis Cluster: use redis-py's cluster client
    #: and run every operation as per-slot steps (see the README).
    REDIS_CLUSTER: bool = False


_KNOWN_KEYS = tuple(PresenceSettings.__dataclass_fields__)


def _bad(key: str, value: Any, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{SETTING_NAME}[{key!r}] is {value!r}; it must be {expected}.")


def _number(key: str, value: Any, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, value, f"a number of seconds >= {minimum:g}")
    if value != value or value < minimum or value == float("inf"):
        raise _bad(key, value, f"a finite number of seconds >= {minimum:g}")
    return float(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _bad(key, value, "one of " + ", ".join(repr(a) for a in allowed))
    return str(value)


def _close_code(key: str, value: Any) -> int:
    if not is_close_code(value):
        raise _bad(key, value, "1000 or an integer from 3000 to 4999 (a websocket close code)")
    return value


def build_settings(raw: Any) -> PresenceSettings:
    """Validate a ``CHANNELS_PRESENCE`` value and return typed settings.

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` naming the
    first wrong key, its value and the allowed values.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING_NAME} is {raw!r}; it must be a dict of settings.")
    unknown = sorted(str(k) for k in raw if k not in _KNOWN_KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING_NAME} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys are {', '.join(_KNOWN_KEYS)}."
        )
    defaults = PresenceSettings()
    values: dict[str, Any] = {}

    cache = raw.get("CACHE", defaults.CACHE)
    if not isinstance(cache, str) or not cache:
        raise _bad("CACHE", cache, "the alias of a cache in CACHES, such as 'default'")
    values["CACHE"] = cache

    max_sessions = raw.get("MAX_SESSIONS", defaults.MAX_SESSIONS)
    if max_sessions is not None and (
        isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1
    ):
        raise _bad("MAX_SESSIONS", max_sessions, "an integer >= 1, or None for unlimited")
    values["MAX_SESSIONS"] = max_sessions

    values["SESSION_SCOPE"] = _choice(
        "SESSION_SCOPE", raw.get("SESSION_SCOPE", defaults.SESSION_SCOPE), _SESSION_SCOPES
    )
    values["ON_LIMIT"] = _choice("ON_LIMIT", raw.get("ON_LIMIT", defaults.ON_LIMIT), _ON_LIMIT)
    values["CLOSE_CODE"] = _close_code("CLOSE_CODE", raw.get("CLOSE_CODE", defaults.CLOSE_CODE))
    values["LOGOUT_CODE"] = _close_code("LOGOUT_CODE", raw.get("LOGOUT_CODE", defaults.LOGOUT_CODE))
    values["REJECT_CODE"] = _close_code("REJECT_CODE", raw.get("REJECT_CODE", defaults.REJECT_CODE))

    ttl = _number("TTL", raw.get("TTL", defaults.TTL), minimum=1)
    heartbeat_raw = raw.get("HEARTBEAT")
    heartbeat = (
        ttl / 3 if heartbeat_raw is None else _number("HEARTBEAT", heartbeat_raw, minimum=0.1)
    )
    if heartbeat > ttl / 2:
        # One late beat must not get a live server's connections swept.
        raise _bad(
            "HEARTBEAT",
            heartbeat_raw,
            f"at most half of TTL ({ttl / 2:g}), or left out for TTL / 3",
        )
    values["TTL"] = ttl
    values["HEARTBEAT"] = heartbeat

    values["ANONYMOUS"] = _choice("ANONYMOUS", raw.get("ANONYMOUS", defaults.ANONYMOUS), _ANONYMOUS)
    prefix = raw.get("KEY_PREFIX", defaults.KEY_PREFIX)
    if not isinstance(prefix, str) or not _KEY_PREFIX_RE.fullmatch(prefix):
        raise _bad(
            "KEY_PREFIX",
            prefix,
            "1 to 64 characters of ASCII letters, digits, and _ . : - { }",
        )
    values["KEY_PREFIX"] = prefix
    values["ON_STORE_ERROR"] = _choice(
        "ON_STORE_ERROR", raw.get("ON_STORE_ERROR", defaults.ON_STORE_ERROR), _ON_STORE_ERROR
    )
    values["LEAVE_GRACE"] = _number(
        "LEAVE_GRACE", raw.get("LEAVE_GRACE", defaults.LEAVE_GRACE), minimum=0
    )
    values["DIFF_INTERVAL"] = _number(
        "DIFF_INTERVAL", raw.get("DIFF_INTERVAL", defaults.DIFF_INTERVAL), minimum=0.01
    )
    logout = raw.get("DISCONNECT_ON_LOGOUT", defaults.DISCONNECT_ON_LOGOUT)
    if not isinstance(logout, bool) and logout != "session":
        raise _bad("DISCONNECT_ON_LOGOUT", logout, "True, False or 'session'")
    values["DISCONNECT_ON_LOGOUT"] = logout
    meta_max = raw.get("METADATA_MAX_BYTES", defaults.METADATA_MAX_BYTES)
    if isinstance(meta_max, bool) or not isinstance(meta_max, int) or not (0 <= meta_max <= 65536):
        raise _bad("METADATA_MAX_BYTES", meta_max, "an integer from 0 to 65536")
    values["METADATA_MAX_BYTES"] = meta_max
    per_user = raw.get("MAX_CONNECTIONS_PER_USER", defaults.MAX_CONNECTIONS_PER_USER)
    if per_user is not None and (
        isinstance(per_user, bool) or not isinstance(per_user, int) or not 1 <= per_user <= 100_000
    ):
        raise _bad(
            "MAX_CONNECTIONS_PER_USER",
            per_user,
            "an integer from 1 to 100000, or None for no limit",
        )
    values["MAX_CONNECTIONS_PER_USER"] = per_user
    per_conn = raw.get("MAX_GROUPS_PER_CONNECTION", defaults.MAX_GROUPS_PER_CONNECTION)
    # Past 500, one connection's joins and disconnect would hold Redis
    # for milliseconds: the cap keeps every store call short.
    if isinstance(per_conn, bool) or not isinstance(per_conn, int) or not 1 <= per_conn <= 500:
        raise _bad("MAX_GROUPS_PER_CONNECTION", per_conn, "an integer from 1 to 500")
    values["MAX_GROUPS_PER_CONNECTION"] = per_conn
    values["LISTENERS_MAX_AGE"] = _number(
        "LISTENERS_MAX_AGE", raw.get("LISTENERS_MAX_AGE", defaults.LISTENERS_MAX_AGE), minimum=0
    )
    values["METRICS_GROUPS"] = _metrics_groups(raw.get("METRICS_GROUPS", defaults.METRICS_GROUPS))
    values["METRICS_INTERVAL"] = _number(
        "METRICS_INTERVAL", raw.get("METRICS_INTERVAL", defaults.METRICS_INTERVAL), minimum=1
    )
    cluster = raw.get("REDIS_CLUSTER", defaults.REDIS_CLUSTER)
    if not isinstance(cluster, bool):
        raise _bad(
            "REDIS_CLUSTER", cluster, "True when the presence cache is a Redis Cluster, else False"
        )
    values["REDIS_CLUSTER"] = cluster
    return PresenceSettings(**values)


def _metrics_groups(value: Any) -> tuple[str, ...]:
    expected = f"a list of at most {MAX_METRICS_GROUPS} group names"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _bad("METRICS_GROUPS", value, expected)
    try:
        groups = validate_group_names(value)
    except InvalidGroupName as exc:
        raise _bad("METRICS_GROUPS", value, f"{expected} ({exc})") from None
    if len(groups) > MAX_METRICS_GROUPS:
        raise _bad("METRICS_GROUPS", value, expected)
    return groups


_cached: PresenceSettings | None = None


def get_settings() -> PresenceSettings:
    """The current settings, validated once and cached until they change."""
    global _cached
    if _cached is None:
        _cached = build_settings(getattr(django_settings, SETTING_NAME, None))
    return _cached


@receiver(setting_changed)
def _reset_on_change(*, setting: str, **kwargs: Any) -> None:
    # override_settings() in tests must take effect at once.
    global _cached
    if setting in (SETTING_NAME, "CACHES"):
        _cached = None
