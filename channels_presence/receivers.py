"""Receivers of Django's own signals."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync

from .conf import get_settings
from .exceptions import PresenceError
from .logs import logger


def disconnect_on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """Close the logged-out session's sockets (``DISCONNECT_ON_LOGOUT``).

    A logged-out browser must keep no live feed; the user's other devices stay
    signed in and keep theirs. Without a session to match (a logout outside a
    request), every socket of the user is closed. Sockets close with
    ``LOGOUT_CODE`` and the reason ``"logged_out"``. A store or layer failure
    is logged: logging out must never fail because of presence.
    """
    conf = get_settings()
    if user is None or not conf.DISCONNECT_ON_LOGOUT or getattr(user, "pk", None) is None:
        return
    session = getattr(getattr(request, "session", None), "session_key", None)
    from .api import _disconnect

    try:
        closed = async_to_sync(_disconnect)(user, conf.LOGOUT_CODE, session, "logged_out")
    except (PresenceError, OSError) as exc:
        logger.error("Could not close the sockets of user %s on logout: %s", user.pk, exc)
        return
    if closed:
        logger.info("Closed %d socket(s) of user %s on logout.", closed, user.pk)
