"""Receivers of Django's own signals."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync

from .conf import get_settings
from .exceptions import PresenceError
from .logs import logger


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
    session = None
    if conf.DISCONNECT_ON_LOGOUT == "session":
        session = getattr(getattr(request, "session", None), "session_key", None)
    from .api import _disconnect, _flushed

    try:
        closed = async_to_sync(_flushed(_disconnect))(user, conf.LOGOUT_CODE, session, "logged_out")
    except (PresenceError, OSError) as exc:
        logger.error("Could not close the sockets of user %s on logout: %s", user.pk, exc)
        return
    if closed:
        logger.info("Closed %d socket(s) of user %s on logout.", closed, user.pk)
