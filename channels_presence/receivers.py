"""Receivers of Django's own signals."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync

from .api import _disconnect, _flushed
from .conf import get_settings
from .exceptions import PresenceError
from .logs import logger
from .names import user_key
from .stores import get_store


def disconnect_on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """Close a user's sockets when they log out (``DISCONNECT_ON_LOGOUT``).

    ``True`` (the default) closes every socket of the user on every server, so
    no browser of theirs keeps a live feed. ``"session"`` closes only the
    sockets of the Django session that logged out, leaving the user's other
    devices connected (all of them when the logout had no session to match).
    Sockets close with ``LOGOUT_CODE`` and the reason ``"logged_out"``. A
    store or layer failure is logged: logging out never fails because of
    presence.
    """
    conf = get_settings()
    if user is None or not conf.DISCONNECT_ON_LOGOUT or getattr(user, "pk", None) is None:
        return
    logged_out = getattr(getattr(request, "session", None), "session_key", None)
    session = logged_out if conf.DISCONNECT_ON_LOGOUT == "session" else None
    try:
        # Fenced first: a connect in flight (a slow hook, a reconnecting client
        # with the old cookie) that reaches the store after this is refused.
        store = get_store()
        if logged_out is not None:
            store.fence(user_key(user), logged_out)
        if session is None:
            store.fence(user_key(user))
        closed = async_to_sync(_flushed(_disconnect))(user, conf.LOGOUT_CODE, session, "logged_out")
    except (PresenceError, OSError) as exc:
        logger.error("Could not close the sockets of user %s on logout: %s", user.pk, exc)
        return
    if closed:
        logger.info("Closed %d socket(s) of user %s on logout.", closed, user.pk)
