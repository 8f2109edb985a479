"""Validation and normalisation of the names presence deals in.

Group names follow Channels' rules (ASCII letters, digits, ``-``, ``_``, ``.``,
fewer than 100 characters) so that every presence group is also a valid
channel-layer group. Users are keyed by ``str(pk)``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

from .exceptions import InvalidGroupName, InvalidUser

MAX_NAME_LENGTH = 100
_GROUP_NAME_RE = re.compile(r"[a-zA-Z0-9\-_.]+")
_MAX_USER_KEY_LENGTH = 255


def validate_group_name(group: Any) -> str:
    """Return ``group`` if Channels accepts it as a group name, else raise.

    Raises :class:`~channels_presence.exceptions.InvalidGroupName` naming the
    value and the rule it breaks.
    """
    if not isinstance(group, str):
        raise InvalidGroupName(
            f"Group name {group!r} is a {type(group).__name__}; it must be a str."
        )
    if not group:
        raise InvalidGroupName("Group name '' is empty; it needs at least one character.")
    if len(group) >= MAX_NAME_LENGTH:
        raise InvalidGroupName(
            f"Group name {group[:40]!r}... is {len(group)} characters long; "
            f"it must be shorter than {MAX_NAME_LENGTH}."
        )
    # fullmatch: a "$" anchor would let a trailing newline through.
    if not _GROUP_NAME_RE.fullmatch(group):
        raise InvalidGroupName(
            f"Group name {group!r} may contain only ASCII letters, digits, "
            "hyphens, underscores and periods."
        )
    return group


def validate_group_names(groups: Iterable[Any]) -> tuple[str, ...]:
    """Validate every name first, then return them without duplicates, in order."""
    if isinstance(groups, (str, bytes)):
        raise InvalidGroupName(
            f"Expected a list of group names, got the single {type(groups).__name__} "
            f"{groups!r}; wrap it in a list."
        )
    checked = [validate_group_name(g) for g in groups]
    return tuple(dict.fromkeys(checked))


def user_key(user: Any) -> str:
    """The key a user is tracked under: ``str(pk)``.

    Accepts a user object (anything with a non-``None`` ``pk``), an ``int``,
    a ``str`` or a ``uuid.UUID``. Raises
    :class:`~channels_presence.exceptions.InvalidUser` for anything else,
    including anonymous users.
    """
    if isinstance(user, bool):
        raise InvalidUser(f"User {user!r} is a bool; pass a user or its primary key.")
    if hasattr(user, "pk") and not isinstance(user, (str, int)):
        if getattr(user, "is_anonymous", False) or user.pk is None:
            raise InvalidUser(f"User {user!r} is anonymous or unsaved; it has no primary key.")
        user = user.pk
    if isinstance(user, int):
        return str(user)
    if isinstance(user, uuid.UUID):
        return str(user)
    if isinstance(user, str):
        if not user or len(user) > _MAX_USER_KEY_LENGTH:
            raise InvalidUser(
                f"User key {user[:40]!r} must be 1 to {_MAX_USER_KEY_LENGTH} characters."
            )
        return user
    raise InvalidUser(
        f"User {user!r} is a {type(user).__name__}; pass a user object or its primary key "
        "(int, str or UUID)."
    )


def pk_parser() -> Callable[[str], Any]:
    """A function turning stored user keys back into the user model's pk type.

    A custom primary key that cannot parse its own ``str()`` stays a string.
    """
    from django.contrib.auth import get_user_model

    to_python = get_user_model()._meta.pk.to_python

    def parse(key: str) -> Any:
        try:
            return to_python(key)
        except Exception:
            return key

    return parse


def user_pk(key: str | None) -> Any:
    """A stored user key (``str(pk)``) back as the user model's primary key type."""
    return None if key is None else pk_parser()(key)


def sorted_pks(keys: Iterable[str | None]) -> list[Any]:
    """Stored user keys as primary keys, sorted (by ``str`` where types mix)."""
    parse = pk_parser()
    pks = [parse(k) for k in keys if k is not None]
    try:
        return sorted(pks)
    except TypeError:
        return sorted(pks, key=str)


def is_close_code(code: Any) -> TypeGuard[int]:
    """Whether ``code`` may close a websocket from the server (RFC 6455):
    1000, or 3000 to 4999, the range for libraries and applications."""
    return (
        isinstance(code, int)
        and not isinstance(code, bool)
        and (code == 1000 or 3000 <= code <= 4999)
    )
