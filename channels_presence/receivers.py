"""Receivers of Django's own signals."""

from __future__ import annotations

from typing import Any

from .conf import get_settings
from .exceptions import PresenceError
from .logs import logger


def disconnect_on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """Close a user's sockets when they log out (``DISCONNECT_ON_LOGOUT``).

    A logged-out browser must keep no live feed. A store or layer failure is
    logged: logging out must never fail because of presence.
    """
    if user is None or not get_settings().DISCONNECT_ON_LOGOUT:
        return
    if getattr(user, "pk", None) is None:
        return
    from .api import disconnect_user

    try:
        closed = disconnect_user(user)
    except (PresenceError, OSError) as exc:
        logger.error("Could not close the sockets of user %s on logout: %s", user.pk, exc)
        return
    if closed:
        logger.info("Closed %d socket(s) of user %s on logout.", closed, user.pk)
